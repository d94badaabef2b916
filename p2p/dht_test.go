package p2p

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
)

// Two bootstrap peers that know each other; a peer connected only to the
// second, a gateway that knows only the first. The first bootstrap peer's
// discover protocol cannot tell the gateway where the peer is; the DHT can.
// The peer is a bare libp2p host: one of ours would, in its first routing
// table refresh, also connect to the first bootstrap peer, whose discover
// protocol would then answer.
func TestFindThroughDHT(t *testing.T) {
	b1 := newBootstrapHost(t)
	b2 := newBootstrapHost(t, b1.FullAddrs()[0])
	gw := newTestHost(t, b1.FullAddrs()[0])
	node, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := node.Connect(ctx, peer.AddrInfo{ID: b2.ID(), Addrs: b2.Addrs()}); err != nil {
		t.Fatal(err)
	}

	// A private DHT: ours, never the public IPFS one.
	protos := b1.Mux().Protocols()
	if !slices.Contains(protos, protocol.ID("/tokenrouter/kad/1.0.0")) || slices.Contains(protos, protocol.ID("/ipfs/kad/1.0.0")) {
		t.Fatalf("bootstrap peer speaks %v, want /tokenrouter/kad/1.0.0 and not /ipfs/kad/1.0.0", protos)
	}
	testkit.WaitFor(t, 10*time.Second, "the bootstrap peers to be in each other's routing table", func() bool {
		return b1.dht.RoutingTable().Find(b2.ID()) != "" && b2.dht.RoutingTable().Find(b1.ID()) != ""
	})
	testkit.WaitFor(t, 10*time.Second, "the gateway to have its bootstrap peer in its routing table", func() bool {
		return gw.dht.RoutingTable().Find(b1.ID()) != ""
	})
	testkit.WaitFor(t, 5*time.Second, "B2 to learn the node's addresses", func() bool { return len(b2.Peerstore().Addrs(node.ID())) > 0 })

	if addrs, err := gw.askWhere(ctx, b1.ID(), node.ID()); err != nil || len(addrs) > 0 {
		t.Fatalf("B1's discover answered %v, %v; the test proves nothing", addrs, err)
	}
	if gw.Network().Connectedness(node.ID()) == network.Connected || len(gw.Peerstore().Addrs(node.ID())) > 0 {
		t.Fatal("the gateway already knows the node; the test proves nothing")
	}
	if err := gw.Find(ctx, node.ID()); err != nil {
		t.Fatalf("Find through the DHT: %v", err)
	}
	if gw.Network().Connectedness(node.ID()) != network.Connected {
		t.Fatal("not connected to the node after Find")
	}
	if len(gw.Peerstore().Addrs(node.ID())) == 0 {
		t.Fatal("the routed addresses are not in the peerstore")
	}
}
