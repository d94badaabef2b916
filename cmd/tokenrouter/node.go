package main

import (
	"context"

	"github.com/spf13/cobra"
	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/nodecore/provider"
	"github.com/tokenrouter/tokenrouter/p2p"
)

func newNodeCmd(g *globals) *cobra.Command {
	var p p2pFlags
	o := launch.NodeOptions{}
	var modelCapacity []string
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Serve models from an OpenAI-compatible engine and earn credits",
		Long: `Run a node. It serves the models of an OpenAI-compatible engine (Ollama,
llama.cpp llama-server, vLLM, LM Studio, MLX, a cloud API, or the synthetic
engine) to gateways over libp2p, announces its load on GossipSub, and earns
for the account whose API key it is given.

Prefer TOKENROUTER_ACCOUNT_KEY to --account-key: command lines are visible to
other users of the machine.`,
		Example: "  tokenrouter node --data D --bootstrap MADDR --platform ID --upstream http://127.0.0.1:11434/v1 --account-key KEY",
		Args:    cobra.NoArgs,
		RunE: p.runE(g, func(ctx context.Context, c launch.Common) error {
			o.Common = c
			caps, err := provider.ParseModelCapacity(modelCapacity)
			if err != nil {
				return err
			}
			o.ModelCapacity = caps
			return launch.Node(ctx, o)
		}),
	}
	p.register(cmd, "node", p2p.DefaultListen)
	f := cmd.Flags()
	f.StringVar(&o.Platform, "platform", "", "peer id of the settlement peer this node trusts (required)")
	f.StringVar(&o.Upstream, "upstream", "http://127.0.0.1:11434/v1", "base URL of the engine's OpenAI-compatible API")
	f.StringVar(&o.UpstreamTokenFile, "upstream-token-file", "", "file holding the bearer token for the engine (cloud APIs)")
	f.StringVar(&o.AccountKey, "account-key", "", "API key of the account this node earns for")
	f.IntVar(&o.Capacity, "capacity", 8, "concurrent calls this node takes per model (the default for every model)")
	f.StringArrayVar(&modelCapacity, "model-capacity", nil,
		"concurrent calls for one model, NAME=N, overriding --capacity (repeatable; e.g. --model-capacity llama3.2=2 --model-capacity Qwen/Qwen2.5-7B-Instruct=16). A full model answers node_full; the others keep serving")
	f.IntVar(&o.MaxInFlight, "max-in-flight", 0,
		"concurrent calls across all models (0 = no cap beyond each model's capacity); for an engine limited as a whole, such as a cloud API key")
	f.StringArrayVar(&o.Models, "model", nil, "serve only this model (repeatable; default: every model the engine lists)")
	f.BoolVar(&o.Synthetic, "synthetic", false, "label this node's engine as the synthetic engine in announcements")
	return cmd
}
