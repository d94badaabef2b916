package main

import (
	"context"

	"github.com/spf13/cobra"
	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/p2p"
)

func newGatewayCmd(g *globals) *cobra.Command {
	var p p2pFlags
	o := launch.GatewayOptions{}
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run an OpenAI-compatible gateway into the network",
		Long: `Run a gateway: an OpenAI-compatible HTTP API (/v1/chat/completions,
/v1/completions, /v1/embeddings, /v1/models, /v1/account) that routes each
call to the least-loaded live node and bills it through the settlement peer.`,
		Example: "  tokenrouter gateway --data D --bootstrap MADDR --platform ID --http 127.0.0.1:8080",
		Args:    cobra.NoArgs,
		RunE: p.runE(g, func(ctx context.Context, c launch.Common) error {
			o.Common = c
			return launch.Gateway(ctx, o)
		}),
	}
	p.register(cmd, "gateway", p2p.DefaultListen)
	f := cmd.Flags()
	f.StringVar(&o.Platform, "platform", "", "peer id of the settlement peer this gateway trusts (required)")
	f.StringVar(&o.HTTP, "http", "127.0.0.1:8080", "HOST:PORT for the OpenAI-compatible API")
	return cmd
}
