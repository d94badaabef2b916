package main

import (
	"context"

	"github.com/spf13/cobra"
	"github.com/tokenrouter/tokenrouter/gateway"
	"github.com/tokenrouter/tokenrouter/internal/journal"
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
	d := gateway.DefaultConfig()
	f.Int64Var(&o.MaxBody, "max-body", d.MaxBody, "largest request body in bytes (413 above it)")
	f.Int64Var(&o.MaxTokens, "max-tokens", d.MaxTokens, "largest max_tokens / max_completion_tokens a call may ask for (400 above it)")
	f.IntVar(&o.RPMLimit, "rpm-limit", d.RequestsPerMinute, "calls a minute per API key, with bursts of a sixth of it (429 above it); 0 = no limit")
	f.DurationVar(&o.HeaderTime, "header-timeout", d.HeaderTimeout, "how long a node may take to start answering before another is tried")
	f.DurationVar(&o.IdleTime, "idle-timeout", d.IdleTimeout, "how long a stream may go without a chunk before it ends with an error event")
	f.DurationVar(&o.MaxCallTime, "max-call-time", d.MaxCallTime, "how long one call may take in all (504, or an error event on a stream)")
	f.BoolVar(&o.JournalSyncEach, "journal-sync-each", false,
		"fsync each call's receipt before answering it; by default receipts are written before the answer and fsync'd within "+
			journal.DefaultConfig().SyncInterval.String()+" (a power cut can lose the bills of the last few ms of calls, a crashed process none)")
	// A consumer's modified gateway, played in tests: it bills its clients
	// and sends settlement no receipt (the nodes' own claims bill the calls).
	f.BoolVar(&o.DropReceipts, "drop-receipts", false, "never send receipts to the settlement peer (tests only)")
	f.MarkHidden("drop-receipts")
	return cmd
}
