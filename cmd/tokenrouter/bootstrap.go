package main

import (
	"github.com/spf13/cobra"
	"github.com/tokenrouter/tokenrouter/internal/launch"
)

func newBootstrapCmd(g *globals) *cobra.Command {
	var p p2pFlags
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Run a bootstrap peer: peer discovery, circuit relay v2, AutoNAT",
		Long: `Run a bootstrap peer, the peer others dial first. It tells peers where other
peers are, relays for peers behind NAT (circuit relay v2), answers AutoNAT
dial-backs and carries gossip between peers that know only it.`,
		Example: "  tokenrouter bootstrap --data D --listen /ip4/0.0.0.0/tcp/4001",
		Args:    cobra.NoArgs,
		RunE:    p.runE(g, launch.Bootstrap),
	}
	p.register(cmd, "bootstrap", []string{"/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"})
	return cmd
}
