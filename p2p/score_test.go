package p2p

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
)

// loadPeer is a test host on the load topic and what it received.
type loadPeer struct {
	h     *Host
	topic *pubsub.Topic
	mu    sync.Mutex
	got   []*pubsub.Message
	seq   uint64
}

// joinLoad joins h to the load topic, with the load validator unless raw
// (a liar's host, whose bad announcements must leave it), and records what
// it delivers.
func joinLoad(t *testing.T, h *Host, raw bool) *loadPeer {
	t.Helper()
	var topic *pubsub.Topic
	var err error
	if raw {
		topic, err = h.PubSub.Join(TopicLoad)
	} else {
		topic, err = JoinLoadTopic(h, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	lp := &loadPeer{h: h, topic: topic, seq: uint64(time.Now().UnixNano())}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); sub.Cancel() })
	go func() {
		for {
			m, err := sub.Next(ctx)
			if err != nil {
				return
			}
			lp.mu.Lock()
			lp.got = append(lp.got, m)
			lp.mu.Unlock()
		}
	}()
	return lp
}

// from lists the announcements lp delivered that p published.
func (lp *loadPeer) from(p peer.ID) []*Announcement {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	var out []*Announcement
	for _, m := range lp.got {
		if m.GetFrom() == p && m.ReceivedFrom != lp.h.ID() {
			var a Announcement
			if err := json.Unmarshal(m.Data, &a); err == nil {
				out = append(out, &a)
			}
		}
	}
	return out
}

// announcement is a valid announcement of lp's at now, with the next Seq.
func (lp *loadPeer) announcement(now time.Time) Announcement {
	lp.seq++
	return Announcement{
		Node: lp.h.ID().String(), Platform: "platform", Addrs: lp.h.FullAddrs(),
		Models: []ModelLoad{{Model: "m", Capacity: 4, InFlight: 1}}, TimeMs: now.UnixMilli(), Seq: lp.seq,
	}
}

func (lp *loadPeer) publish(t *testing.T, a Announcement) {
	t.Helper()
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.topic.Publish(context.Background(), b); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

// meet connects lp to every other peer and waits until each sees the
// others on the load topic.
func meet(t *testing.T, peers ...*loadPeer) {
	t.Helper()
	for i, a := range peers {
		for _, b := range peers[i+1:] {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := a.h.Connect(ctx, peer.AddrInfo{ID: b.h.ID(), Addrs: b.h.Addrs()})
			cancel()
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
		}
	}
	for _, a := range peers {
		for _, b := range peers {
			if a != b {
				testkit.WaitFor(t, 10*time.Second, "peers on the load topic", func() bool { return slices.Contains(a.topic.ListPeers(), b.h.ID()) })
			}
		}
	}
}

// announceEvery has lp announce every d until the test ends.
func announceEvery(t *testing.T, lp *loadPeer, d time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		tk := time.NewTicker(d)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tk.C:
				b, _ := json.Marshal(lp.announcement(now))
				lp.topic.Publish(ctx, b)
			}
		}
	}()
}

// waitScore waits until at's GossipSub score of p satisfies ok, and
// returns it.
func waitScore(t *testing.T, at *Host, p peer.ID, what string, ok func(float64) bool) float64 {
	t.Helper()
	var s float64
	testkit.WaitFor(t, 15*time.Second, what, func() bool {
		var known bool
		s, known = at.Scores.PeerScore(p)
		return known && ok(s)
	})
	return s
}

// Forged, stale, replayed, oversized and malformed announcements sent
// straight to a gateway and an honest node are dropped by both, and the
// sender's score there falls below the graylist threshold; the honest
// announcer's stays at or above 0.
func TestScoreDropsLiesAndPunishesTheSender(t *testing.T) {
	boot := newTestHost(t)
	gw := joinLoad(t, newTestHost(t, boot.FullAddrs()[0]), false)
	honest := joinLoad(t, newTestHost(t, boot.FullAddrs()[0]), false)
	liar := joinLoad(t, newTestHost(t, boot.FullAddrs()[0]), true)
	meet(t, gw, honest, liar)
	announceEvery(t, honest, time.Second)

	// Valid announcements first, until the mesh carries them to both
	// receivers; the replay repeats the last.
	valid := map[uint64]bool{}
	var first Announcement
	heard := func() bool {
		for _, at := range []*loadPeer{gw, honest} {
			if got := at.from(liar.h.ID()); len(got) == 0 || got[len(got)-1].Seq != first.Seq {
				return false
			}
		}
		return true
	}
	testkit.WaitFor(t, 10*time.Second, "the liar's valid announcements at both receivers", func() bool {
		first = liar.announcement(time.Now())
		valid[first.Seq] = true
		liar.publish(t, first)
		time.Sleep(300 * time.Millisecond)
		return heard()
	})
	time.Sleep(ReorderWindow + 500*time.Millisecond) // past it, a repeat is a replay, not a reordering

	now := time.Now()
	lies := map[string]func() Announcement{
		"forged": func() Announcement { a := liar.announcement(now); a.Node = honest.h.ID().String(); return a },
		"stale":  func() Announcement { return liar.announcement(now.Add(-time.Minute)) },
		"future": func() Announcement { return liar.announcement(now.Add(time.Minute)) },
		"replayed": func() Announcement {
			a := first
			a.TimeMs = now.UnixMilli()
			return a
		},
		"oversized": func() Announcement {
			a := liar.announcement(now)
			a.Hardware = strings.Repeat("x", MaxAnnouncement)
			return a
		},
		"malformed": func() Announcement {
			a := liar.announcement(now)
			a.Models[0].Capacity = -1
			return a
		},
	}
	// Sent in one burst: once the liar's score is negative its peers prune
	// it from their meshes, and GossipSub stops carrying what it sends.
	const rounds = 4
	for range rounds {
		for _, lie := range lies {
			liar.publish(t, lie())
		}
	}
	for _, at := range []*loadPeer{gw, honest} {
		s := waitScore(t, at.h, liar.h.ID(), "the liar's score under the graylist threshold",
			func(s float64) bool { return s < GraylistThreshold })
		t.Logf("%d lies of %d kinds: the liar's score is %.0f (graylist %d)", rounds*len(lies), len(lies), s, GraylistThreshold)
	}
	time.Sleep(time.Second) // anything still on its way arrives
	for name, at := range map[string]*loadPeer{"gateway": gw, "honest node": honest} {
		seqs := map[uint64]bool{}
		for _, a := range at.from(liar.h.ID()) {
			if !valid[a.Seq] || seqs[a.Seq] {
				t.Errorf("the %s delivered a lie: %+v", name, a)
			}
			seqs[a.Seq] = true
		}
		for _, a := range at.from(honest.h.ID()) {
			if a.Node != honest.h.ID().String() {
				t.Errorf("the %s delivered a forged announcement", name)
			}
		}
	}
	if s := waitScore(t, gw.h, honest.h.ID(), "the honest node's score", func(float64) bool { return true }); s < 0 {
		t.Errorf("the honest node's score at the gateway is %.1f, want >= 0", s)
	}
	if got := len(gw.from(honest.h.ID())); got == 0 {
		t.Error("the honest node's announcements never reached the gateway")
	}
}

// A node whose lies a gateway saw (its application score) falls under the
// graylist threshold there, and its announcements stop reaching it.
func TestScoreAppPenaltyGraylists(t *testing.T) {
	boot := newTestHost(t)
	gw := joinLoad(t, newTestHost(t, boot.FullAddrs()[0]), false)
	node := joinLoad(t, newTestHost(t, boot.FullAddrs()[0]), false)
	meet(t, gw, node)
	announceEvery(t, node, 500*time.Millisecond)
	testkit.WaitFor(t, 10*time.Second, "the node's announcements at the gateway", func() bool { return len(gw.from(node.h.ID())) > 0 })
	if s := waitScore(t, gw.h, node.h.ID(), "the node's score", func(float64) bool { return true }); s < 0 {
		t.Fatalf("an honest node's score is %.1f", s)
	}

	units := -GraylistThreshold/AppWeight + 5
	gw.h.Scores.Penalize(node.h.ID(), float64(units))
	s := waitScore(t, gw.h, node.h.ID(), "the node's score under the graylist threshold", func(s float64) bool { return s < GraylistThreshold })
	t.Logf("%d units of lies seen: score %.0f", units, s)
	time.Sleep(time.Second) // announcements already accepted are delivered
	before := len(gw.from(node.h.ID()))
	time.Sleep(3 * time.Second) // six announcements
	if after := len(gw.from(node.h.ID())); after != before {
		t.Errorf("the graylisted node's announcements still arrive: %d more in 3 s", after-before)
	}
}

// Dev meshes put every role on 127.0.0.1: none of them loses score for
// sharing an address (GossipSub's IP-colocation penalty, P6).
func TestScoreLoopbackPeersStayFine(t *testing.T) {
	boot := newTestHost(t)
	var peers []*loadPeer
	for range 7 {
		lp := joinLoad(t, newTestHost(t, boot.FullAddrs()[0]), false)
		peers = append(peers, lp)
	}
	meet(t, peers...)
	for _, lp := range peers {
		announceEvery(t, lp, time.Second)
	}
	time.Sleep(4 * time.Second)
	for _, a := range peers {
		for _, b := range peers {
			if a == b {
				continue
			}
			if s := waitScore(t, a.h, b.h.ID(), "a score", func(float64) bool { return true }); s < 0 {
				t.Errorf("a loopback peer's score is %.2f, want >= 0", s)
			}
		}
	}
}

// TestScoreColocation: more than IPColocationFactorThreshold (10) peers on
// one address cost each of them P6 unless the address is local (localNets).
// It runs on this machine's first non-loopback IPv4 address, whichever
// kind it is, and checks the penalty GossipSub applies matches.
func TestScoreColocation(t *testing.T) {
	ip := firstNonLoopback()
	if ip == nil {
		t.Skip("no non-loopback IPv4 address: GossipSub does not count loopback, nothing to test")
	}
	local := slices.ContainsFunc(localNets, func(n *net.IPNet) bool { return n.Contains(ip) })
	params, _ := ScoreParams(nil)
	n := params.IPColocationFactorThreshold + 2
	snaps := make(chan map[peer.ID]*pubsub.PeerScoreSnapshot, 1)
	var topics []*pubsub.Topic // joined, so the peers exchange subscriptions
	var ids []peer.ID
	var addrs []peer.AddrInfo
	for i := range n {
		// No resource manager: libp2p's refuses a 9th connection from one
		// IPv4 address, so P6 (from the 11th peer) only matters where that
		// limit is raised.
		h, err := libp2p.New(libp2p.ListenAddrStrings(fmt.Sprintf("/ip4/%s/tcp/0", ip)), libp2p.DisableMetrics(),
			libp2p.ResourceManager(&network.NullResourceManager{}))
		if err != nil {
			t.Skipf("cannot listen on %s: %v", ip, err)
		}
		t.Cleanup(func() { h.Close() })
		opts := ScoreOptions(nil)
		if i == 0 {
			opts = append(opts, pubsub.WithPeerScoreInspect(pubsub.ExtendedPeerScoreInspectFn(func(m map[peer.ID]*pubsub.PeerScoreSnapshot) {
				select {
				case snaps <- m:
				default:
				}
			}), 200*time.Millisecond))
		}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		ps, err := pubsub.NewGossipSub(ctx, h, opts...)
		if err != nil {
			t.Fatal(err)
		}
		topic, err := ps.Join(TopicLoad)
		if err != nil {
			t.Fatal(err)
		}
		topics, ids, addrs = append(topics, topic), append(ids, h.ID()), append(addrs, peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()})
		if i > 0 {
			if err := h.Connect(ctx, addrs[0]); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := 0.0
	if !local {
		want = 1 // (n-1 peers - threshold)²
	}
	testkit.WaitFor(t, 10*time.Second, "the first host to score every other", func() bool {
		m := <-snaps
		if len(m) < n-1 {
			return false
		}
		for _, id := range ids[1:] {
			if s, ok := m[id]; !ok || s.IPColocationFactor != want {
				return false
			}
		}
		return true
	})
	t.Logf("%d peers on %s (local %v): P6 %.0f each, %.2f points", n-1, ip, local, want, want*params.IPColocationFactorWeight)
}

func firstNonLoopback() net.IP {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil && !n.IP.IsLinkLocalUnicast() {
			return n.IP.To4()
		}
	}
	return nil
}

func TestScoreParamsValid(t *testing.T) {
	p, th := ScoreParams(nil)
	for _, opt := range []pubsub.Option{pubsub.WithPeerScore(p, th)} {
		h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.DisableMetrics())
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if _, err := pubsub.NewGossipSub(context.Background(), h, opt); err != nil {
			t.Fatalf("GossipSub refuses the parameters: %v", err)
		}
	}
	for ip, want := range map[string]bool{"127.0.0.1": true, "10.1.2.3": true, "172.20.0.1": true, "192.168.1.1": true,
		"100.64.3.4": true, "fd00::1": true, "8.8.8.8": false, "192.0.2.2": false, "2001:db8::1": false} {
		got := slices.ContainsFunc(localNets, func(n *net.IPNet) bool { return n.Contains(net.ParseIP(ip)) })
		if got != want {
			t.Errorf("%s local = %v, want %v", ip, got, want)
		}
	}
}

// TestLoadValidatorVerdicts drives the load validator with a fixed clock
// through the edges of each verdict: what is rejected (the sender pays)
// and what only ignored (an honest path may deliver it).
func TestLoadValidatorVerdicts(t *testing.T) {
	_, from := testkit.RandomPeer(t)
	_, self := testkit.RandomPeer(t)
	_, fwd := testkit.RandomPeer(t)
	now := time.UnixMilli(1_700_000_000_000)
	addrs := []string{"/ip4/127.0.0.1/tcp/4001"}
	seq := uint64(100)
	ann := func(at time.Time, mut func(*Announcement)) Announcement {
		seq++
		a := Announcement{Node: from.String(), Addrs: addrs, TimeMs: at.UnixMilli(), Seq: seq,
			Models: []ModelLoad{{Model: "m", Capacity: 4, InFlight: 2, InFlightBy: map[string]int{"gw": 2}}}}
		if mut != nil {
			mut(&a)
		}
		return a
	}
	const accept, reject, ignore = pubsub.ValidationAccept, pubsub.ValidationReject, pubsub.ValidationIgnore
	var last Announcement // the last accepted
	v := newLoadValidator(func() time.Time { return now }, self)
	for _, tc := range []struct {
		name  string
		after time.Duration // the clock moves first
		a     func() Announcement
		want  pubsub.ValidationResult
	}{
		{"fresh", 0, func() Announcement { return ann(now, nil) }, accept},
		{"11 s old", 0, func() Announcement { return ann(now.Add(-11*time.Second), nil) }, ignore},
		{"13 s old", 0, func() Announcement { return ann(now.Add(-13*time.Second), nil) }, reject},
		{"13 s ahead", 0, func() Announcement { return ann(now.Add(13*time.Second), nil) }, reject},
		{"ahead by eons", 0, func() Announcement { return ann(now, func(a *Announcement) { a.TimeMs = math.MaxInt64 }) }, reject},
		{"behind by eons", 0, func() Announcement { return ann(now, func(a *Announcement) { a.TimeMs = math.MinInt64 }) }, reject},
		{"negative capacity", 0, func() Announcement { return ann(now, func(a *Announcement) { a.Models[0].Capacity = -1 }) }, reject},
		{"negative in flight", 0, func() Announcement { return ann(now, func(a *Announcement) { a.Models[0].InFlight = -1 }) }, reject},
		{"more by gateway than in flight", 0, func() Announcement {
			return ann(now, func(a *Announcement) { a.Models[0].InFlightBy["gw2"] = 1 })
		}, reject},
		{"a nameless model", 0, func() Announcement { return ann(now, func(a *Announcement) { a.Models[0].Model = "" }) }, reject},
		{"negative rate", 0, func() Announcement { return ann(now, func(a *Announcement) { a.TokPerSec = -1 }) }, reject},
		{"an older one, 2 s late", 2 * time.Second, func() Announcement {
			a := last
			a.Seq--
			a.TimeMs -= 1000 // published a second before the last
			return a
		}, ignore},
		{"the last again, 4 s on (a replay)", 2 * time.Second, func() Announcement { return last }, reject},
		{"a fresh one", 0, func() Announcement { return ann(now, nil) }, accept},
		{"its number again at a later time", 100 * time.Millisecond, func() Announcement {
			a := last
			a.TimeMs = now.UnixMilli()
			return a
		}, reject},
		{"one published 4 s before the last", 0, func() Announcement {
			return ann(now.Add(-4*time.Second), func(a *Announcement) { a.Seq = last.Seq - 1 })
		}, reject},
		{"resent by its node: 1st", 0, func() Announcement { return last }, ignore},
		{"2nd", 0, func() Announcement { return last }, ignore},
		{"3rd", 0, func() Announcement { return last }, ignore},
		{"4th", 0, func() Announcement { return last }, ignore},
		{"5th: a flood", 0, func() Announcement { return last }, reject},
		{"forwarded by another peer, it is only late", 0, func() Announcement { return last }, ignore},
		{"a burst: 1st", time.Second, func() Announcement { return ann(now, nil) }, accept},
		{"2nd", 0, func() Announcement { return ann(now, nil) }, accept},
		{"3rd", 0, func() Announcement { return ann(now, nil) }, accept},
		{"4th", 0, func() Announcement { return ann(now, nil) }, accept},
		{"5th: too frequent", 0, func() Announcement { return ann(now, nil) }, ignore},
		{"half a second later, one more", 500 * time.Millisecond, func() Announcement { return ann(now, nil) }, accept},
		{"and not two", 0, func() Announcement { return ann(now, nil) }, ignore},
	} {
		now = now.Add(tc.after)
		a := tc.a()
		data, _ := json.Marshal(a)
		src := from
		if strings.HasPrefix(tc.name, "forwarded") {
			src = fwd
		}
		res := v(context.Background(), src, &pubsub.Message{Message: &pb.Message{From: []byte(from), Data: data}})
		if res != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, res, tc.want)
		}
		if res == accept {
			last = a
		}
	}
	// A host's own announcements (delivered by itself) are not limited.
	for i := range 2 * int(AnnounceBurst) {
		data, _ := json.Marshal(Announcement{Node: self.String(), TimeMs: now.UnixMilli(), Seq: uint64(i + 1)})
		if res := v(context.Background(), self, &pubsub.Message{Message: &pb.Message{From: []byte(self), Data: data}}); res != accept {
			t.Errorf("its own announcement %d: %v", i+1, res)
		}
	}
}
