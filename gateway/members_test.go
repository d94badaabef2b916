package gateway

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
	"github.com/tokenrouter/tokenrouter/p2p"
)

func memberAnn(id peer.ID, seq uint64) *p2p.Announcement {
	return &p2p.Announcement{Node: id.String(), Seq: seq, Models: []p2p.ModelLoad{{Model: "m", Capacity: 4}}, TokPerSec: 50}
}

// candidate reports whether the view would route a call for "m" to id.
func candidate(v *View, id peer.ID) bool {
	got, lease, ok := v.Acquire("m", nil)
	if !ok {
		return false
	}
	lease.Done(route.Neutral, 0, 0)
	return got == id
}

func listed(v *View, id peer.ID) bool {
	for _, m := range v.Models() {
		for _, in := range m.Instances {
			if in.Node == id.String() {
				return true
			}
		}
	}
	return false
}

// TestMemberEventsGateTheView drives the view with membership's events: a
// suspect gets no calls until it refutes; a dead node leaves the tables,
// a late announcement does not bring it back, Alive does.
func TestMemberEventsGateTheView(t *testing.T) {
	_, id := testkit.RandomPeer(t)
	now := time.Unix(1_700_000_000, 0)
	v := NewView("gw", route.DefaultConfig(), func() time.Time { return now }, 10*time.Second, 1)
	v.Update(id, memberAnn(id, 1))
	if !candidate(v, id) {
		t.Fatal("announced node is not a candidate")
	}
	steps := []struct {
		name      string
		do        func()
		candidate bool
		listed    bool
	}{
		{"suspect", func() { v.MemberChanged(p2p.MemberEvent{Peer: id, State: p2p.MemberSuspect}) }, false, true},
		{"refuted", func() { v.MemberChanged(p2p.MemberEvent{Peer: id, State: p2p.MemberAlive}) }, true, true},
		{"dead", func() { v.MemberChanged(p2p.MemberEvent{Peer: id, State: p2p.MemberDead}) }, false, false},
		{"a straggler announcement", func() { now = now.Add(time.Second); v.Update(id, memberAnn(id, 2)) }, false, false},
		{"a health report", func() {
			v.SetReport(&p2p.HealthReport{Scores: []p2p.InstanceScore{{Node: id.String(), Model: "m", Score: 1, Ramp: 1}}})
		}, false, false},
		{"alive again", func() { v.MemberChanged(p2p.MemberEvent{Peer: id, State: p2p.MemberAlive}) }, true, true},
		{"left", func() { v.MemberChanged(p2p.MemberEvent{Peer: id, State: p2p.MemberLeft}) }, false, false},
		{"announces after the gate expired", func() { now = now.Add(memberGoneTTL + time.Second); v.Update(id, memberAnn(id, 3)) }, false, false},
		{"rejoins", func() { v.MemberChanged(p2p.MemberEvent{Peer: id, State: p2p.MemberAlive}) }, true, true},
	}
	for _, s := range steps {
		s.do()
		if got := candidate(v, id); got != s.candidate {
			t.Fatalf("%s: candidate = %v, want %v", s.name, got, s.candidate)
		}
		if got := listed(v, id); got != s.listed {
			t.Fatalf("%s: listed = %v, want %v", s.name, got, s.listed)
		}
	}
}

func newMemberHost(t *testing.T, dir string, bootstrap ...string) *p2p.Host {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := p2p.NewHost(ctx, p2p.Config{
		DataDir:     dir,
		Listen:      []string{"/ip4/127.0.0.1/tcp/0"},
		Bootstrap:   bootstrap,
		Membership:  true,
		RedialEvery: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("NewHost: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// TestMembershipTakesACrashedNodeOutOfTheView runs real membership on
// loopback: a node whose host dies without leaving stops being a candidate
// at the gateway, is declared dead, is not re-added by an announcement sent
// before it died, and comes back when it restarts with its identity and
// rejoins.
func TestMembershipTakesACrashedNodeOutOfTheView(t *testing.T) {
	boot := newMemberHost(t, t.TempDir())
	gw := newMemberHost(t, t.TempDir(), boot.FullAddrs()...)
	nodeDir := t.TempDir()
	node := newMemberHost(t, nodeDir, boot.FullAddrs()...)
	for _, h := range []*p2p.Host{boot, gw, node} {
		testkit.WaitFor(t, 10*time.Second, "three members", func() bool { return h.Members.NumMembers() == 3 })
	}
	v := NewView(gw.IDString(), route.DefaultConfig(), time.Now, 10*time.Second, 1)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	v.followMembers(ctx, gw, &wg)
	id := node.ID()
	v.Update(id, memberAnn(id, 1))
	if !candidate(v, id) {
		t.Fatal("announced node is not a candidate")
	}

	start := time.Now()
	node.Host.Close() // the libp2p host dies; its membership never leaves
	testkit.WaitFor(t, 5*time.Second, "the crashed node out of the candidates", func() bool { return !candidate(v, id) })
	t.Logf("crashed node out of the gateway's candidates after %v", time.Since(start).Round(time.Millisecond))
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("took %v, over 3 s", took)
	}
	testkit.WaitFor(t, 15*time.Second, "the crashed node declared dead", func() bool { return gw.Members.State(id) == p2p.MemberDead })
	v.Update(id, memberAnn(id, 2)) // a straggler, published before the crash
	if candidate(v, id) || listed(v, id) {
		t.Fatal("a late announcement brought a dead node back")
	}
	node.Close()

	// It restarts with the same identity and rejoins: alive, a candidate again.
	again := newMemberHost(t, nodeDir, boot.FullAddrs()...)
	if again.ID() != id {
		t.Fatalf("restarted with another identity")
	}
	testkit.WaitFor(t, 20*time.Second, "the restarted node alive at the gateway", func() bool { return gw.Members.State(id) == p2p.MemberAlive })
	testkit.WaitFor(t, 2*time.Second, "the restarted node a candidate", func() bool { return candidate(v, id) })
}

// TestClosedConnectionToALiveNode: the connection manager (or a flaky
// link) closes the gateway's connection to a node that is alive. The node
// is out of the candidates at once, as a killed one would be, and back as
// soon as the gateway's redial connects, without waiting minutes for its
// next announcement.
func TestClosedConnectionToALiveNode(t *testing.T) {
	boot := newMemberHost(t, t.TempDir())
	gw := newMemberHost(t, t.TempDir(), boot.FullAddrs()...)
	node := newMemberHost(t, t.TempDir(), boot.FullAddrs()...)
	v := NewView(gw.IDString(), route.DefaultConfig(), time.Now, 10*time.Second, 1)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	if err := v.watchConnections(ctx, gw, &wg); err != nil {
		t.Fatal(err)
	}
	id := node.ID()
	a := memberAnn(id, 1)
	a.EveryMs = (10 * time.Minute).Milliseconds() // a wide gossip budget: no announcement soon
	v.Update(id, a)
	gw.Peerstore().AddAddrs(id, node.Addrs(), time.Hour)
	testkit.WaitFor(t, 10*time.Second, "the gateway connected to the node", func() bool {
		gw.Connect(ctx, peer.AddrInfo{ID: id})
		return gw.Network().Connectedness(id) == network.Connected
	})
	if !candidate(v, id) {
		t.Fatal("announced node is not a candidate")
	}
	start := time.Now()
	gw.Network().ClosePeer(id)
	testkit.WaitFor(t, 10*time.Second, "the node a candidate again after its connection closed", func() bool {
		return gw.Network().Connectedness(id) == network.Connected && candidate(v, id)
	})
	t.Logf("back as a candidate %v after its connection closed", time.Since(start).Round(time.Millisecond))
}
