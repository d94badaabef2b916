package p2p

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/memberlist"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
)

// newSwimHost is a plain libp2p host on loopback (what the mesh simulation
// hands StartMembership), closed at test end.
func newSwimHost(t testing.TB) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatalf("libp2p.New: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// knows teaches a the addresses of b (as a bootstrap address would).
func knows(a, b host.Host) {
	a.Peerstore().AddAddrs(b.ID(), b.Addrs(), peerstore.PermanentAddrTTL)
}

func startMember(t testing.TB, h host.Host) *Membership {
	t.Helper()
	var log *slog.Logger
	if os.Getenv("SWIM_DEBUG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("self", h.ID().String()[len(h.ID().String())-4:])
	}
	m, err := StartMembership(context.Background(), h, DefaultMembershipConfig(), log)
	if err != nil {
		t.Fatalf("StartMembership: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestSwimTransportCluster: three hosts form a cluster through the libp2p
// transport. b and c only know a; each learns the other in the join's
// push/pull, with its addresses (node metadata), and reaches it: their
// probes open a connection between them.
func TestSwimTransportCluster(t *testing.T) {
	ha, hb, hc := newSwimHost(t), newSwimHost(t), newSwimHost(t)
	knows(hb, ha)
	knows(hc, ha)
	ma, mb, mc := startMember(t, ha), startMember(t, hb), startMember(t, hc)
	ctx := context.Background()
	if n, err := mb.Join(ctx, []peer.ID{ha.ID()}); err != nil || n != 1 {
		t.Fatalf("b joins a: %d, %v", n, err)
	}
	if n, err := mc.Join(ctx, []peer.ID{ha.ID(), hc.ID()}); err != nil || n != 1 {
		t.Fatalf("c joins a (and skips itself): %d, %v", n, err)
	}
	all := []peer.ID{ha.ID(), hb.ID(), hc.ID()}
	for _, m := range []*Membership{ma, mb, mc} {
		testkit.WaitFor(t, 5*time.Second, "three members everywhere", func() bool { return sameIDs(m.Members(), all) })
	}
	// c learnt b from a's state (it dialled only a) and reaches it.
	if len(hc.Peerstore().Addrs(hb.ID())) == 0 {
		t.Fatal("c has no address for b: node metadata did not carry it")
	}
	testkit.WaitFor(t, 10*time.Second, "b and c connected by their probes", func() bool {
		return len(hc.Network().ConnsToPeer(hb.ID())) > 0 && len(hb.Network().ConnsToPeer(hc.ID())) > 0
	})
	testkit.WaitFor(t, 10*time.Second, "c holds b alive", func() bool { return mc.State(hb.ID()) == MemberAlive })
}

func TestMembershipConfigValidate(t *testing.T) {
	if err := DefaultMembershipConfig().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for name, mod := range map[string]func(*MembershipConfig){
		"timeout not below interval": func(c *MembershipConfig) { c.ProbeTimeout = c.ProbeInterval },
		"no gossip":                  func(c *MembershipConfig) { c.GossipNodes = 0 },
		"packet too large":           func(c *MembershipConfig) { c.PacketSize = maxSwimPacket + 1 },
		"no queue":                   func(c *MembershipConfig) { c.PacketQueue = 0 },
	} {
		c := DefaultMembershipConfig()
		mod(&c)
		if c.Validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func sameIDs(a, b []peer.ID) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestSwimTransportPacketsAndStreams exercises the transport without
// memberlist: packets arrive with a From that names the sender, addresses
// without a name are refused, a stream carries bytes both ways and honours
// its deadlines, and a dial to an unreachable peer gives up in time.
func TestSwimTransportPacketsAndStreams(t *testing.T) {
	ha, hb := newSwimHost(t), newSwimHost(t)
	knows(ha, hb)
	cfg := DefaultMembershipConfig().transportConfig()
	ta := newSwimTransport(ha, cfg, nil, discardLog())
	tb := newSwimTransport(hb, cfg, nil, discardLog())
	t.Cleanup(func() { ta.Shutdown(); tb.Shutdown() })

	toB := memberlist.Address{Addr: SwimAddr{hb.ID()}.String(), Name: hb.ID().String()}
	for i := range 3 {
		if _, err := ta.WriteToAddress([]byte{byte(i + 1), 'x'}, toB); err != nil {
			t.Fatalf("WriteToAddress: %v", err)
		}
	}
	for i := range 3 {
		select {
		case p := <-tb.PacketCh():
			if !bytes.Equal(p.Buf, []byte{byte(i + 1), 'x'}) {
				t.Fatalf("packet %d = %q", i, p.Buf)
			}
			if from, ok := p.From.(SwimAddr); !ok || from.Peer != ha.ID() {
				t.Fatalf("packet from %v, want a", p.From)
			}
			if _, _, err := net.SplitHostPort(p.From.String()); err != nil {
				t.Fatalf("From %q is not host:port (memberlist parses it): %v", p.From, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("packet %d did not arrive", i)
		}
	}
	if _, err := ta.WriteToAddress([]byte{1}, memberlist.Address{Addr: "127.0.0.1:7946"}); !errors.Is(err, ErrNoNodeName) {
		t.Fatalf("nameless address: %v, want ErrNoNodeName", err)
	}

	ca, err := ta.DialAddressTimeout(toB, 5*time.Second)
	if err != nil {
		t.Fatalf("DialAddressTimeout: %v", err)
	}
	defer ca.Close()
	if _, err := ca.Write([]byte("push")); err != nil {
		t.Fatal(err)
	}
	var cb net.Conn
	select {
	case cb = <-tb.StreamCh():
	case <-time.After(5 * time.Second):
		t.Fatal("stream did not arrive")
	}
	defer cb.Close()
	if cb.RemoteAddr().(SwimAddr).Peer != ha.ID() || ca.RemoteAddr().(SwimAddr).Peer != hb.ID() {
		t.Fatalf("addresses: b sees %v, a sees %v", cb.RemoteAddr(), ca.RemoteAddr())
	}
	buf := make([]byte, 4)
	if _, err := cb.Read(buf); err != nil || string(buf) != "push" {
		t.Fatalf("b read %q, %v", buf, err)
	}
	if _, err := cb.Write([]byte("pull")); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Read(buf); err != nil || string(buf) != "pull" {
		t.Fatalf("a read %q, %v", buf, err)
	}

	// Nothing more comes: a read deadline ends the read with a timeout.
	ca.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	start := time.Now()
	_, err = ca.Read(buf)
	var ne net.Error
	if err == nil || !(errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	if waited := time.Since(start); waited > 3*time.Second {
		t.Fatalf("read deadline of 200 ms returned after %v", waited)
	}

	// A peer nobody can reach: the dial gives up within its timeout.
	gone := newSwimHost(t)
	knows(ha, gone)
	gone.Close()
	start = time.Now()
	if _, err := ta.DialAddressTimeout(memberlist.Address{Name: gone.ID().String()}, time.Second); err == nil {
		t.Fatal("dialled a closed host")
	}
	if waited := time.Since(start); waited > 3*time.Second {
		t.Fatalf("a 1 s dial timeout returned after %v", waited)
	}
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// TestMembershipDetectsCrash: a member's host dies without leaving (the
// libp2p host closes under a running membership). Every other member
// reports it within 3 s, and reports it Suspect first (the suspicion
// reaches everyone long before memberlist's suspicion timeout).
func TestMembershipDetectsCrash(t *testing.T) {
	const n = 9
	hosts := make([]host.Host, n)
	members := make([]*Membership, n)
	for i := range hosts {
		hosts[i] = newSwimHost(t)
		if i > 0 {
			knows(hosts[i], hosts[0])
		}
		members[i] = startMember(t, hosts[i])
	}
	for i := 1; i < n; i++ {
		if _, err := members[i].Join(context.Background(), []peer.ID{hosts[0].ID()}); err != nil {
			t.Fatalf("member %d joins: %v", i, err)
		}
	}
	for i, m := range members {
		// Under a loaded machine (CI, -race) a member may miss a probe or two
		// while the cluster forms, be suspected and refute; give it time.
		deadline := time.Now().Add(20 * time.Second)
		for m.NumMembers() != n {
			if time.Now().After(deadline) {
				for j, h := range hosts {
					t.Logf("member %d sees %d (%s): %s", i, j, h.ID(), m.State(h.ID()))
				}
				for _, node := range m.ml.Members() {
					t.Logf("memberlist at %d lists %s", i, node.Name)
				}
				t.Fatalf("member %d: %d members, want %d", i, m.NumMembers(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	victim := n / 2
	vid := hosts[victim].ID()
	type seen struct {
		member int
		after  time.Duration
		state  MemberState
	}
	results := make(chan seen, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i, m := range members {
		if i == victim {
			continue
		}
		events, cancel := m.Subscribe()
		defer cancel()
		if st := m.State(vid); st != MemberAlive {
			// A false suspicion while the cluster formed on a loaded
			// machine; it already holds the victim out.
			t.Logf("member %d already holds the victim %s", i, st)
			results <- seen{i, 0, MemberSuspect}
			continue
		}
		wg.Go(func() {
			timeout := time.After(10 * time.Second)
			for {
				select {
				case e := <-events:
					if e.Peer == vid && (e.State == MemberSuspect || e.State == MemberDead) {
						results <- seen{i, time.Since(start), e.State}
						return
					}
				case <-timeout:
					results <- seen{i, -1, 0}
					return
				}
			}
		})
	}
	start = time.Now()
	hosts[victim].Close() // a crash: no leave
	wg.Wait()
	close(results)
	var worst time.Duration
	for r := range results {
		if r.after < 0 {
			t.Errorf("member %d never reported the crashed member", r.member)
			continue
		}
		t.Logf("member %d: %s after %v", r.member, r.state, r.after.Round(time.Millisecond))
		worst = max(worst, r.after)
		if r.state != MemberSuspect {
			t.Errorf("member %d first reported %s: a suspicion must be reported when it arrives", r.member, r.state)
		}
		if r.after > 3*time.Second {
			t.Errorf("member %d reported the crash after %v, over 3 s", r.member, r.after)
		}
	}
	t.Logf("crash reported by every member within %v (max over %d members)", worst.Round(time.Millisecond), n-1)
}

// TestHostMembershipLeaveIsLeft: hosts with Config.Membership join through
// their bootstrap peer; one that closes is reported Left, not Dead.
func TestHostMembershipLeaveIsLeft(t *testing.T) {
	boot := newMemberHost(t)
	a := newMemberHost(t, boot.FullAddrs()...)
	b := newMemberHost(t, boot.FullAddrs()...)
	for _, h := range []*Host{boot, a, b} {
		testkit.WaitFor(t, 10*time.Second, "three members", func() bool { return h.Members.NumMembers() == 3 })
	}
	events, cancel := boot.Members.Subscribe()
	defer cancel()
	if err := b.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	deadline := time.After(5 * time.Second)
	for {
		select {
		case e := <-events:
			if e.Peer != b.ID() {
				continue
			}
			if e.State != MemberLeft {
				t.Fatalf("a graceful close was reported %s", e.State)
			}
			if got := boot.Members.State(b.ID()); got != MemberLeft {
				t.Fatalf("State = %s, want left", got)
			}
			testkit.WaitFor(t, 5*time.Second, "a sees b left", func() bool { return a.Members.State(b.ID()) == MemberLeft })
			return
		case <-deadline:
			t.Fatal("the leave was not reported")
		}
	}
}

func newMemberHost(t *testing.T, bootstrap ...string) *Host {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := NewHost(ctx, Config{
		DataDir:     t.TempDir(),
		Listen:      []string{"/ip4/127.0.0.1/tcp/0"},
		Bootstrap:   bootstrap,
		Membership:  true,
		RedialEvery: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("NewHost: %v", err)
	}
	if h.Members == nil {
		t.Fatal("Config.Membership set but Host.Members is nil")
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// TestMemberTrackerRules drives the tracker with memberlist's own wire
// messages and checks it follows memberlist's rules.
func TestMemberTrackerRules(t *testing.T) {
	ids := make([]peer.ID, 3)
	for i := range ids {
		ids[i] = newSwimHost(t).ID()
	}
	self, x, y := ids[0].String(), ids[1].String(), ids[2].String()
	var got []MemberEvent
	tr := newMemberTracker(self, time.Now, func(e MemberEvent) { got = append(got, e) })
	tr.joined(self)
	tr.joined(x)
	tr.joined(y)
	msg := func(typ byte, inc uint32, node, from string) []byte {
		var b bytes.Buffer
		b.WriteByte(typ)
		codec.NewEncoder(&b, &codec.MsgpackHandle{}).Encode(map[string]any{"Incarnation": inc, "Node": node, "From": from})
		return b.Bytes()
	}
	compound := func(parts ...[]byte) []byte {
		b := []byte{swimCompoundMsg, byte(len(parts))}
		for _, p := range parts {
			b = append(b, byte(len(p)>>8), byte(len(p)))
		}
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	steps := []struct {
		name string
		do   func()
		want MemberState // x's state after
	}{
		{"alive at 3", func() { tr.observe(msg(swimAliveMsg, 3, x, "")) }, MemberAlive},
		{"a suspicion of an older incarnation is ignored", func() { tr.observe(msg(swimSuspectMsg, 2, x, y)) }, MemberAlive},
		{"a suspicion inside a compound packet", func() { tr.observe(compound(msg(0, 1, "", ""), msg(swimSuspectMsg, 3, x, y))) }, MemberSuspect},
		{"an alive of the same incarnation does not refute", func() { tr.observe(msg(swimAliveMsg, 3, x, "")) }, MemberSuspect},
		{"a higher incarnation refutes", func() { tr.observe(append([]byte{swimHasCrcMsg, 0, 0, 0, 0}, msg(swimAliveMsg, 4, x, "")...)) }, MemberAlive},
		{"memberlist declares it dead", func() { tr.gone(x) }, MemberDead},
		{"a suspicion of a dead member is ignored", func() { tr.observe(msg(swimSuspectMsg, 9, x, y)) }, MemberDead},
		{"it comes back", func() { tr.joined(x) }, MemberAlive},
		{"it says it leaves", func() { tr.observe(msg(swimDeadMsg, 5, x, x)) }, MemberAlive},
		{"memberlist reports the leave", func() { tr.gone(x) }, MemberLeft},
	}
	for _, s := range steps {
		s.do()
		if st := tr.state(ids[1]); st != s.want {
			t.Fatalf("%s: state %s, want %s", s.name, st, s.want)
		}
	}
	want := []MemberEvent{
		{ids[1], MemberAlive}, {ids[2], MemberAlive}, // joins (self is not reported)
		{ids[1], MemberSuspect}, {ids[1], MemberAlive}, {ids[1], MemberDead}, {ids[1], MemberAlive}, {ids[1], MemberLeft},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("events %v\nwant %v", got, want)
	}
	// Suspicions and leaves about ourselves are memberlist's to refute.
	tr.observe(msg(swimSuspectMsg, 9, self, x))
	if st := tr.state(ids[0]); st != MemberAlive {
		t.Fatalf("self became %s", st)
	}
}

// BenchmarkSwimPacket compares the two ways of carrying memberlist's
// packets over libp2p on loopback: the transport's kept per-peer stream,
// and a new stream per packet. cpu-ns/packet is the process's CPU time
// (sender and receiver both live here) per packet delivered.
func BenchmarkSwimPacket(b *testing.B) {
	ha, hb := newSwimHost(b), newSwimHost(b)
	knows(ha, hb)
	cfg := DefaultMembershipConfig().transportConfig()
	cfg.PacketQueue = 1 << 16
	ta := newSwimTransport(ha, cfg, nil, discardLog())
	tb := newSwimTransport(hb, cfg, nil, discardLog())
	b.Cleanup(func() { ta.Shutdown(); tb.Shutdown() })
	pkt := bytes.Repeat([]byte{'p'}, 120) // a ping with its source fields
	toB := memberlist.Address{Name: hb.ID().String()}
	run := func(b *testing.B, send func()) {
		b.ReportAllocs()
		done := make(chan struct{})
		go func() {
			for range b.N {
				<-tb.PacketCh()
			}
			close(done)
		}()
		cpu0 := cpuTime()
		for b.Loop() {
			send()
		}
		<-done
		b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/packet")
	}
	b.Run("kept-stream", func(b *testing.B) {
		run(b, func() { ta.WriteToAddress(pkt, toB) })
	})
	b.Run("stream-per-packet", func(b *testing.B) {
		run(b, func() {
			if st := ta.writePacket(hb.ID(), nil, pkt); st != nil {
				st.Close()
			}
		})
	})
}

// cpuTime is the CPU time this process used so far, in ns.
func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
