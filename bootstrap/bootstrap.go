// Package bootstrap is the peer others dial first: it tells peers where
// other peers are (/tokenrouter/discover/1, and as a server of the private
// DHT), offers circuit relay v2 and AutoNAT to peers behind NAT, seeds
// membership, and joins the gossip topics so that announcements flow from
// the first moment two peers know it.
package bootstrap

import (
	"context"
	"fmt"

	"github.com/tokenrouter/tokenrouter/p2p"
)

// Run joins the gossip topics on h (created with relay, NAT service and peer
// exchange on) and serves until ctx ends. ready is called once it serves.
func Run(ctx context.Context, h *p2p.Host, ready func()) error {
	topic, err := p2p.JoinLoadTopic(h, nil)
	if err != nil {
		return fmt.Errorf("bootstrap: join load topic: %w", err)
	}
	// Subscribing puts this peer in the topic's mesh, so it relays
	// announcements between peers that know only it.
	sub, err := topic.Subscribe()
	if err != nil {
		return fmt.Errorf("bootstrap: subscribe: %w", err)
	}
	defer sub.Cancel()
	go func() {
		for {
			if _, err := sub.Next(ctx); err != nil {
				return
			}
		}
	}()
	if ready != nil {
		ready()
	}
	<-ctx.Done()
	return nil
}

// HostConfig returns the p2p configuration a bootstrap peer runs with.
func HostConfig(dataDir string, listen, bootstrap []string) p2p.Config {
	return p2p.Config{
		DataDir:      dataDir,
		Listen:       listen,
		Bootstrap:    bootstrap,
		RelayService: true,
		NATService:   true,
		PeerExchange: true,
		DHTServer:    true,
		Membership:   true,
		// Everyone dials a bootstrap peer at a published address: it is
		// public by definition, and libp2p starts the relay service only
		// on a host it believes public (AutoNAT alone would need another
		// AutoNAT server to dial this one back).
		Reachability: p2p.ReachabilityPublic,
	}
}
