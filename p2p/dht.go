package p2p

// Discovery beyond the bootstrap peers: a Kademlia DHT, used for peer
// routing only (FindPeer), not rendezvous.
//
// Find needs "where is peer X?" by peer id, which is exactly a DHT FindPeer.
// Rendezvous answers another question (who registered under a namespace),
// which GossipSub announcements already answer; it keeps its state on the
// rendezvous servers, so every node would have to register with every
// bootstrap peer and a gateway could still not find a node registered only
// with a bootstrap peer it does not know. The DHT needs no registration, no
// extra module (go-libp2p-kad-dht), and spreads lookups over every publicly
// reachable peer, not only the bootstrap peers.
//
// It is a private DHT: protocol /tokenrouter/kad/1.0.0, never the public
// IPFS DHT, seeded only with the configured bootstrap peers (it works
// offline), with no values and no provider records. Bootstrap peers are DHT
// servers; other hosts run in auto mode (a server once AutoNAT finds them
// publicly reachable, a client behind NAT, where the relay that holds their
// reservation answers for them). The fast /tokenrouter/discover/1 question
// to the bootstrap peers comes first; the DHT is the fallback.

import (
	"context"
	"fmt"
	"time"

	kaddht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// DHTPrefix is the protocol prefix of Token-Router's DHT
// (/tokenrouter/kad/1.0.0), which keeps it apart from the public IPFS DHT.
const DHTPrefix protocol.ID = "/tokenrouter"

// dhtFindTimeout bounds one DHT lookup, the fallback a gateway waits on
// before it tries another node: a lookup takes a few round trips, and
// Find gives one dial as long.
const dhtFindTimeout = 5 * time.Second

// startDHT starts the DHT without waiting for it: its routing table fills
// in the background from the bootstrap peers as they connect. It is closed
// when ctx ends.
func (h *Host) startDHT(ctx context.Context) error {
	mode := kaddht.ModeAuto
	if h.cfg.DHTServer {
		mode = kaddht.ModeServer
	}
	d, err := kaddht.New(h.Host,
		kaddht.Mode(mode),
		kaddht.ProtocolPrefix(DHTPrefix),
		kaddht.DisableValues(),
		kaddht.DisableProviders(),
		kaddht.BootstrapPeers(h.bootstrap...),
	)
	if err != nil {
		return fmt.Errorf("p2p: start dht: %w", err)
	}
	h.dht = d
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		<-ctx.Done()
		d.Close()
	}()
	return d.Bootstrap(ctx)
}

// findInDHT looks p up in the DHT, stores the addresses found in the
// peerstore and connects to p.
func (h *Host) findInDHT(ctx context.Context, p peer.ID) error {
	if h.dht == nil {
		return ErrPeerNotFound
	}
	fctx, cancel := context.WithTimeout(ctx, dhtFindTimeout)
	defer cancel()
	ai, err := h.dht.FindPeer(fctx, p)
	if err != nil {
		// Not found, an empty routing table, or out of time: unknown all the same.
		return fmt.Errorf("%w: dht: %w", ErrPeerNotFound, err)
	}
	if len(ai.Addrs) == 0 {
		return ErrPeerNotFound
	}
	h.Peerstore().AddAddrs(p, ai.Addrs, peerstore.TempAddrTTL)
	if h.Network().Connectedness(p) == network.Connected {
		return nil
	}
	return h.Connect(fctx, ai)
}
