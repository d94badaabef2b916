package p2p

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
)

// newBootstrapHost is a host configured as bootstrap.HostConfig configures
// one (that package imports this one).
func newBootstrapHost(t *testing.T, bootstrap ...string) *Host {
	t.Helper()
	return newHostWith(t, Config{Bootstrap: bootstrap, RelayService: true, NATService: true, PeerExchange: true, DHTServer: true,
		Reachability: ReachabilityPublic})
}

func newHostWith(t *testing.T, cfg Config) *Host {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg.DataDir = t.TempDir()
	cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	h, err := NewHost(ctx, cfg)
	if err != nil {
		t.Fatalf("NewHost: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func TestConfigReachability(t *testing.T) {
	for _, tc := range []struct {
		reach string
		ok    bool
	}{{"", true}, {"private", true}, {"public", true}, {"Private", false}, {"unknown", false}} {
		c := Config{DataDir: "d", Reachability: tc.reach}
		if err := c.Validate(); (err == nil) != tc.ok {
			t.Errorf("Reachability %q: Validate() = %v, want ok %v", tc.reach, err, tc.ok)
		}
	}
}

// A node behind NAT (told so: loopback has no NAT for AutoNAT to find)
// reserves a slot on the relay of each of its two bootstrap peers, and a
// gateway that knows only the node's circuit address through either
// reaches it through that relay and opens ordinary streams on the relayed
// connection. (Relay addresses are built from the relay's public addresses
// only, so on loopback the node cannot list one; the netns test in
// cmd/tokenrouter checks that it does.)
func TestRelayedNode(t *testing.T) {
	boots := []*Host{newBootstrapHost(t), newBootstrapHost(t)}
	node := newHostWith(t, Config{Bootstrap: []string{boots[0].FullAddrs()[0], boots[1].FullAddrs()[0]}, Reachability: ReachabilityPrivate})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, boot := range boots {
		gw := newTestHost(t, boot.FullAddrs()[0])
		ai, err := peer.AddrInfoFromString(boot.FullAddrs()[0] + "/p2p-circuit/p2p/" + node.ID().String())
		if err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, 20*time.Second, fmt.Sprintf("the node's reservation on relay %d", i), func() bool {
			gw.Network().(*swarm.Swarm).Backoff().Clear(node.ID())
			dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
			defer dcancel()
			return gw.Connect(dctx, *ai) == nil
		})
		checkRelayedStream(t, gw, node)
	}
	// A host not behind NAT takes no reservation: a dial to it through the
	// relay is refused.
	gw := newTestHost(t, boots[0].FullAddrs()[0])
	other := newTestHost(t, boots[0].FullAddrs()[0])
	gwCircuit, _ := peer.AddrInfoFromString(boots[0].FullAddrs()[0] + "/p2p-circuit/p2p/" + gw.ID().String())
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	defer dcancel()
	if err := other.Connect(dctx, *gwCircuit); err == nil {
		t.Fatal("reached a host that holds no reservation through the relay")
	}
}

// checkRelayedStream checks gw's only connection to node is a relayed one,
// not limited, on which an ordinary stream (no WithAllowLimitedConn, as
// calls open them) opens.
func checkRelayedStream(t *testing.T, gw, node *Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conns := gw.Network().ConnsToPeer(node.ID())
	if len(conns) != 1 || !IsRelayed(conns[0].RemoteMultiaddr()) {
		t.Fatalf("gateway's connections to the node: %v, want one relayed", conns)
	}
	if conns[0].Stat().Limited {
		t.Fatal("the relayed connection is limited: calls could not open streams on it")
	}
	s, err := gw.NewStream(ctx, node.ID(), ProtoDiscover)
	if err != nil {
		t.Fatalf("stream over the relayed connection: %v", err)
	}
	if !IsRelayed(s.Conn().RemoteMultiaddr()) {
		t.Fatalf("stream went over %s, not the relay", s.Conn().RemoteMultiaddr())
	}
	s.Close()
	if c := gw.Network().Connectedness(node.ID()); c != network.Connected {
		t.Fatalf("connectedness %v through an unlimited relay, want Connected", c)
	}
}

func TestListensEverywhere(t *testing.T) {
	for _, tc := range []struct {
		listen []string
		want   bool
	}{
		{DefaultListen, true},
		{[]string{"/ip4/127.0.0.1/tcp/0"}, false},
		{[]string{"/ip4/127.0.0.1/tcp/0", "/ip6/::/udp/0/quic-v1"}, true},
		{nil, false},
	} {
		if got := listensEverywhere(tc.listen); got != tc.want {
			t.Errorf("listensEverywhere(%v) = %v, want %v", tc.listen, got, tc.want)
		}
	}
	if IsRelayed(ma.StringCast("/ip4/1.2.3.4/tcp/1")) {
		t.Error("a TCP address is not relayed")
	}
}
