package main

import (
	"context"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement"
)

func newSettleCmd(g *globals) *cobra.Command {
	var p p2pFlags
	o := launch.SettleOptions{}
	cmd := &cobra.Command{
		Use:   "settle",
		Short: "Run the platform settlement peer: accounts, API keys, the Pebble ledger",
		Long: `Run the platform settlement peer. It keeps the ledger (Pebble, in <data>/ledger),
opens accounts with the starting credit (POST /v1/accounts), answers
GET /v1/account, checks API keys for gateways, links nodes to accounts and
commits every paid call's split from the receipts gateways send.

It also hosts cloud-account nodes: POST /v1/nodes/cloud with a provider's
base URL, API token and models starts a node in this process that serves
that cloud API and earns for the caller's account (docs/cloud-nodes.md).
The API tokens are sealed with AES-256-GCM under a master key:

  TOKENROUTER_MASTER_KEY   32 bytes as 64 hex digits or base64
                           (make one with: openssl rand -base64 32)

Without it the key is read from --master-key-file (default <data>/master.key),
which is created with a random key on first start and must be mode 0600.
Start again with the same key: another key is refused, never used on the
old tokens. Back the key up apart from the data directory: a copy of both
opens the tokens; losing the key loses them (the accounts re-register).

Hosted nodes call public addresses over https only: a base URL with plain
http, or one whose host is or resolves to a loopback, private (RFC 1918,
fc00::/7), link-local (169.254.0.0/16, the cloud metadata address, fe80::/10),
CGNAT (100.64.0.0/10), multicast or other non-public address, is refused at
registration and at every connection. --cloud-allow-private lifts this for
local engines (tokenrouter dev sets it); never use it on a public platform.`,
		Example: "  tokenrouter settle --data D --bootstrap /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW... --http 127.0.0.1:8090",
		Args:    cobra.NoArgs,
		RunE: p.runE(g, func(ctx context.Context, c launch.Common) error {
			o.Common = c
			// The master key itself comes from the environment only, never a
			// flag: command lines are visible to other users of the machine.
			o.MasterKey = os.Getenv(settlement.MasterKeyEnv)
			return launch.Settle(ctx, o)
		}),
	}
	p.register(cmd, "settle", p2p.DefaultListen)
	f := cmd.Flags()
	f.StringVar(&o.HTTP, "http", "127.0.0.1:8090", "HOST:PORT for the HTTP API (accounts)")
	f.StringVar(&o.PricesFile, "prices", "", "price table file (JSON or YAML): µcr per 1M input/output tokens per model")
	f.IntVar(&o.SignupLimit, "signup-limit", 5, "accounts one client address may create per hour (0 = unlimited)")
	f.DurationVar(&o.ClaimGrace, "claim-grace", settlement.DefaultConfig().ClaimGrace,
		"how long a node's own claim for a call waits for its gateway's receipt before it bills the call by itself")
	f.Float64Var(&o.RampStart, "ramp-start", 0.10, "fraction of its declared capacity a new instance may use at first")
	f.DurationVar(&o.RampPeriod, "ramp-period", 7*24*time.Hour, "time for a new instance to reach its full declared capacity")
	f.DurationVar(&o.ProbeEvery, "probe-every", time.Minute, "how often the settlement peer probes each live instance")
	f.StringVar(&o.MasterKeyFile, "master-key-file", "", "file holding the master key that seals cloud API tokens, used when "+
		settlement.MasterKeyEnv+" is unset (default <data>/master.key, created on first start)")
	f.BoolVar(&o.CloudAllowPrivate, settlement.AllowPrivateFlag, false, "let hosted cloud nodes call loopback, private and "+
		"link-local addresses, and plain http to loopback (local engines; never on a public platform)")
	return cmd
}
