package main

import (
	"context"
	"log/slog"

	"github.com/spf13/cobra"
	"github.com/tokenrouter/tokenrouter/internal/launch"
)

// p2pFlags are the flags of every long-running libp2p role (SPEC §7).
type p2pFlags struct {
	data      string
	listen    []string
	bootstrap []string
	metrics   string
}

func (p *p2pFlags) register(cmd *cobra.Command, role string, listen []string) {
	f := cmd.Flags()
	f.StringVar(&p.data, "data", defaultData(role), "data directory: identity key, state, and the addrs/peer-id/ready files scripts wait on")
	f.StringArrayVar(&p.listen, "listen", listen, "libp2p multiaddr to listen on (repeatable)")
	f.StringArrayVar(&p.bootstrap, "bootstrap", nil, "multiaddr of a bootstrap peer, with /p2p/<id> (repeatable)")
	f.StringVar(&p.metrics, "metrics", "", "HOST:PORT of a listener serving only GET /metrics (Prometheus); the bound address is written to <data>/metrics-addr "+
		"(gateway and settle also serve /metrics on --http)")
}

func (p *p2pFlags) common(g *globals) (launch.Common, error) {
	log, err := g.logger()
	if err != nil {
		return launch.Common{}, err
	}
	return p.options(log), nil
}

// options are the common options from the flags, logging to log.
func (p *p2pFlags) options(log *slog.Logger) launch.Common {
	return launch.Common{Data: p.data, Listen: p.listen, Bootstrap: p.bootstrap, Metrics: p.metrics, Logger: log}
}

// runE is the RunE of a libp2p role: build the common options from the
// flags, then start the role with them.
func (p *p2pFlags) runE(g *globals, start func(ctx context.Context, c launch.Common) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		c, err := p.common(g)
		if err != nil {
			return err
		}
		return start(cmd.Context(), c)
	}
}
