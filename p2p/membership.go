package p2p

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Membership is SWIM failure detection (hashicorp/memberlist, with its
// Lifeguard extensions) run over libp2p streams: every member probes
// others, suspects a member that does not answer, gossips the suspicion
// and declares the member dead when it does not refute in time. Each
// member's name is its peer id. memberlist's user broadcasts are not used:
// they starve near 1,000 members (memberlist#299), and load rides
// GossipSub; membership only says who is alive.
type Membership struct {
	ml    *memberlist.Memberlist
	tr    *swimTransport
	track *memberTracker
	cfg   MembershipConfig
	log   *slog.Logger
	self  peer.ID

	resyncQ  chan peer.ID // members believed gone that sent us a packet
	resyncMu sync.Mutex
	resynced map[peer.ID]time.Time // when each was last resynced

	subMu  sync.Mutex
	subs   map[*subscriber]struct{}
	closed bool

	forgetAfter time.Duration // dead members are forgotten this long after they died
	stop        context.CancelFunc
	closing     atomic.Bool   // Close started
	done        chan struct{} // closed when Close has finished
	closeErr    error
	loops       sync.WaitGroup // maintain, watchAddrs
	wg          sync.WaitGroup // subscribers
}

// MemberState is what this member believes of another.
type MemberState uint8

// Member states. A suspect is probably dead (it missed a probe) and is
// treated as gone by routing until it refutes (Alive again) or is
// declared Dead. Left is a graceful leave.
const (
	MemberAlive MemberState = iota + 1
	MemberSuspect
	MemberDead
	MemberLeft
)

func (s MemberState) String() string {
	switch s {
	case MemberAlive:
		return "alive"
	case MemberSuspect:
		return "suspect"
	case MemberDead:
		return "dead"
	case MemberLeft:
		return "left"
	}
	return "unknown"
}

// MemberEvent is a change of another member's state, as this member learnt it.
type MemberEvent struct {
	Peer  peer.ID
	State MemberState
}

// Errors of membership.
var (
	ErrMembershipClosed = errors.New("p2p: membership closed")
	ErrJoin             = errors.New("p2p: could not join any member")
)

// MembershipConfig tunes failure detection. The defaults are memberlist's
// LAN configuration tuned so that a crashed member is reported Suspect (or
// Dead) at every other member within 3 s at p99, with 1,000 members and
// 50 ms links (100 ms round trips). Detection time, with those defaults:
//
//  1. until some member probes the crashed one: each of the N-1 others
//     probes one member per ProbeInterval in a shuffled round robin, so
//     probes of any one member arrive about once per interval: exponential,
//     mean 300 ms, p99 ln(100) x 300 ms = 1.38 s;
//  2. the probe fails at its deadline, ProbeInterval = 300 ms after it was
//     sent (ProbeTimeout only starts the indirect probes and the stream
//     fallback; an ack counts until the deadline);
//  3. the suspicion spreads: the prober gossips it at its next gossip tick,
//     and so does every member that hears it, to GossipNodes = 4 others:
//     a push epidemic with fanout 4 reaches N members in about
//     log_5(N) + ln(N)/4 = 4.3 + 1.7 = 6 rounds at N = 1,000, each round
//     half a gossip interval plus one link (50 + 50 ms): ~0.6 s, ~0.9 s for
//     the last member.
//
// Total: ~1.1 s at p50, 1.38 + 0.3 + 0.9 = 2.6 s at p99. Each member
// reports Suspect the moment the suspicion reaches it (see swimstate.go).
type MembershipConfig struct {
	ProbeInterval           time.Duration // how often a member probes another; also each probe's deadline
	ProbeTimeout            time.Duration // direct-ack wait before indirect probes and the stream fallback start
	SuspicionMult           int           // a suspect is declared dead after SuspicionMult x log10(N) x ProbeInterval (with confirmations)
	SuspicionMaxTimeoutMult int           // ... and at most this many times that without confirmations (Lifeguard)
	GossipInterval          time.Duration // how often queued suspect/alive/dead messages are gossiped
	GossipNodes             int           // members gossiped to each interval
	RetransmitMult          int           // each message is retransmitted RetransmitMult x ceil(log10(N+1)) times
	PushPullInterval        time.Duration // full state exchange with a random member (anti-entropy)
	StreamTimeout           time.Duration // bound on one push/pull or fallback ping stream, dial included
	PacketSize              int           // the largest packet memberlist builds (piggybacked messages fill it)
	LeaveTimeout            time.Duration // how long Close waits for the leave message to be gossiped
	PacketQueue             int           // packets queued per peer while its stream opens; more are dropped
	IdleStream              time.Duration // a per-peer packet stream unused this long is closed
}

// DefaultMembershipConfig is tuned for 1,000 members on 50 ms links (see
// MembershipConfig for the detection time it gives).
func DefaultMembershipConfig() MembershipConfig {
	return MembershipConfig{
		ProbeInterval:           300 * time.Millisecond, // LAN: 1 s. First-probe delay is ~exponential with this mean (p99 4.6x); 300 ms still fits a cold probe (QUIC dial + ping + ack = 2 RTT = 200 ms)
		ProbeTimeout:            150 * time.Millisecond, // LAN: 500 ms. 1.5x the 100 ms RTT: a warm probe's ack is late only if something is wrong
		SuspicionMult:           4,                      // LAN default: dead after 4 x 3 x 300 ms = 3.6 s at 1,000 members; routing acts on Suspect, so Dead is not on the 3 s path
		SuspicionMaxTimeoutMult: 6,                      // LAN default: an unconfirmed suspicion waits up to 6x longer, so one confused prober cannot kill a member quickly
		GossipInterval:          100 * time.Millisecond, // LAN: 200 ms. Each hop waits ~half of it; gossip sends nothing when nothing is queued, so idle cost is zero
		GossipNodes:             4,                      // LAN: 3. Fanout 4 reaches 1,000 members in ~6 rounds instead of ~7
		RetransmitMult:          4,                      // LAN default: 16 sends of each message per member at 1,000 members; a member misses it with probability ~e^-16
		PushPullInterval:        30 * time.Second,       // LAN default (memberlist stretches it with log2 of N): anti-entropy only, ~100 KB each at 1,000 members
		StreamTimeout:           10 * time.Second,       // LAN TCPTimeout: a push/pull of 1,000 members over a slow relay
		PacketSize:              4096,                   // LAN: 1,400 (a UDP MTU). A libp2p stream has no MTU; ~28 suspicions ride one packet, so a mass failure spreads nearly as fast as one
		LeaveTimeout:            time.Second,            // a leave is gossiped RetransmitMult x log10(N) times, 4 members per 100 ms: ~0.4 s at 1,000 members
		PacketQueue:             64,                     // a probe round and a gossip burst while a stream to the peer opens; beyond, drop as UDP would
		IdleStream:              5 * time.Second,        // outlives a probe-ack exchange and a gossip burst; the connection manager may trim the connection anyway
	}
}

// Validate reports a configuration that cannot work.
func (c MembershipConfig) Validate() error {
	switch {
	case c.ProbeInterval <= 0 || c.ProbeTimeout <= 0 || c.ProbeTimeout >= c.ProbeInterval:
		return errors.New("p2p: membership needs 0 < ProbeTimeout < ProbeInterval")
	case c.SuspicionMult < 1 || c.SuspicionMaxTimeoutMult < 1 || c.RetransmitMult < 1:
		return errors.New("p2p: membership multipliers must be at least 1")
	case c.GossipInterval <= 0 || c.GossipNodes < 1:
		return errors.New("p2p: membership needs a positive GossipInterval and GossipNodes")
	case c.PushPullInterval <= 0 || c.StreamTimeout <= 0 || c.LeaveTimeout <= 0 || c.IdleStream <= 0:
		return errors.New("p2p: membership intervals and timeouts must be positive")
	case c.PacketSize < 512 || c.PacketSize > maxSwimPacket:
		return fmt.Errorf("p2p: membership PacketSize must be within [512, %d]", maxSwimPacket)
	case c.PacketQueue < 1:
		return errors.New("p2p: membership PacketQueue must be at least 1")
	}
	return nil
}

// memberlistConfig is memberlist's LAN configuration with c applied.
func (c MembershipConfig) memberlistConfig(name string, tr memberlist.Transport, ev memberlist.EventDelegate, log *slog.Logger) *memberlist.Config {
	mc := memberlist.DefaultLANConfig()
	mc.Name = name
	mc.Transport = tr
	mc.Events = ev
	mc.Logger = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	mc.RequireNodeNames = true   // the transport routes by name only
	mc.EnableCompression = false // packets are small; plain ones are cheaper and readable by the tracker
	mc.BindPort, mc.AdvertisePort = swimPort, swimPort
	mc.ProbeInterval, mc.ProbeTimeout = c.ProbeInterval, c.ProbeTimeout
	mc.SuspicionMult, mc.SuspicionMaxTimeoutMult = c.SuspicionMult, c.SuspicionMaxTimeoutMult
	mc.GossipInterval, mc.GossipNodes, mc.RetransmitMult = c.GossipInterval, c.GossipNodes, c.RetransmitMult
	mc.PushPullInterval, mc.TCPTimeout = c.PushPullInterval, c.StreamTimeout
	mc.UDPBufferSize = c.PacketSize
	return mc
}

func (c MembershipConfig) transportConfig() swimTransportConfig {
	return swimTransportConfig{
		DialTimeout:  c.StreamTimeout,
		WriteTimeout: c.StreamTimeout,
		PacketQueue:  c.PacketQueue,
		IdleStream:   c.IdleStream,
	}
}

// StartMembership starts failure detection on h (which it serves
// ProtoSwimPacket and ProtoSwimStream on). The member is alone until it
// joins others (Join) or others join it. When ctx ends it leaves as by
// Close.
func StartMembership(ctx context.Context, h host.Host, cfg MembershipConfig, log *slog.Logger) (*Membership, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Membership{
		cfg: cfg, log: log, self: h.ID(), subs: map[*subscriber]struct{}{},
		resyncQ: make(chan peer.ID, 16), resynced: map[peer.ID]time.Time{},
		done: make(chan struct{}),
	}
	m.track = newMemberTracker(h.ID().String(), time.Now, m.publish)
	m.tr = newSwimTransport(h, cfg.transportConfig(), m.onPacket, log)
	mc := cfg.memberlistConfig(h.ID().String(), m.tr, memberEvents{m.track, h}, log)
	mc.Delegate = memberMeta{h}
	ml, err := memberlist.Create(mc)
	if err != nil {
		m.tr.Shutdown()
		return nil, fmt.Errorf("p2p: start membership: %w", err)
	}
	m.ml = ml
	m.forgetAfter = 2 * memberlist.DefaultLANConfig().GossipToTheDeadTime // memberlist forgets them after one
	mctx, stop := context.WithCancel(ctx)
	m.stop = stop
	m.loops.Go(func() { m.maintain(mctx) })
	m.loops.Go(func() { m.resyncLoop(mctx) })
	if err := m.watchAddrs(mctx, h); err != nil {
		m.Close()
		return nil, err
	}
	go func() {
		select {
		case <-ctx.Done():
			m.Close()
		case <-m.done:
		}
	}()
	return m, nil
}

// memberEvents is memberlist's EventDelegate: it calls it with its node
// lock held, so neither the tracker nor the peerstore call memberlist back.
type memberEvents struct {
	t *memberTracker
	h host.Host
}

func (d memberEvents) NotifyJoin(n *memberlist.Node) {
	learnAddrs(d.h, n)
	d.t.joined(n.Name)
}

func (d memberEvents) NotifyLeave(n *memberlist.Node)  { d.t.gone(n.Name) }
func (d memberEvents) NotifyUpdate(n *memberlist.Node) { learnAddrs(d.h, n) }

// Join contacts each of peers (dialling them from the peerstore) and
// exchanges state with it, so this member learns every member they know
// and they learn it. It returns how many it reached; ErrJoin when none.
func (m *Membership) Join(ctx context.Context, peers []peer.ID) (int, error) {
	if m.isClosed() {
		return 0, ErrMembershipClosed
	}
	var errs []error
	n := 0
	for _, p := range peers {
		if p == m.self {
			continue
		}
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		// memberlist's "name/host:port" form: the name routes, the
		// placeholder address is only recorded.
		k, err := m.ml.Join([]string{p.String() + "/" + SwimAddr{p}.String()})
		n += k
		if err != nil {
			errs = append(errs, err)
		}
	}
	if n == 0 {
		return 0, fmt.Errorf("%w: %w", ErrJoin, errors.Join(errs...))
	}
	return n, nil
}

// Members lists the members this member believes alive, itself included;
// suspects are left out.
func (m *Membership) Members() []peer.ID { return m.track.aliveMembers() }

// NumMembers is len(Members()).
func (m *Membership) NumMembers() int { return len(m.track.aliveMembers()) }

// State is what this member believes of id (0 if it never heard of it).
func (m *Membership) State(id peer.ID) MemberState { return m.track.state(id) }

// Subscribe returns a channel of every later change of another member's
// state, in order, and a function that ends the subscription (and closes
// the channel). Events are never dropped: a subscriber that does not
// receive holds them in memory. Close ends every subscription.
func (m *Membership) Subscribe() (<-chan MemberEvent, func()) {
	s := &subscriber{ch: make(chan MemberEvent), wake: make(chan struct{}, 1), done: make(chan struct{})}
	m.subMu.Lock()
	defer m.subMu.Unlock()
	if m.closed {
		close(s.ch)
		return s.ch, func() {}
	}
	m.subs[s] = struct{}{}
	m.wg.Go(s.run)
	return s.ch, func() {
		m.subMu.Lock()
		delete(m.subs, s)
		m.subMu.Unlock()
		s.end()
	}
}

// publish hands e to every subscriber (called by the tracker, in order).
func (m *Membership) publish(e MemberEvent) {
	m.log.Debug("member state", "peer", e.Peer.String(), "state", e.State.String())
	m.subMu.Lock()
	defer m.subMu.Unlock()
	for s := range m.subs {
		s.push(e)
	}
}

func (m *Membership) isClosed() bool {
	m.subMu.Lock()
	defer m.subMu.Unlock()
	return m.closed
}

// Close leaves gracefully (others report this member Left), then stops.
// Concurrent calls wait for the first on a channel, not a mutex: under
// testing/synctest a goroutine blocked on a mutex would stop virtual time,
// and with it the leave's timeout. A probe memberlist has in flight ends
// at its own deadline, up to 8 (AwarenessMaxMultiplier) probe intervals
// after Close returns: a synctest bubble must sleep that long before its
// main goroutine exits (time stops then).
func (m *Membership) Close() error {
	if !m.closing.CompareAndSwap(false, true) {
		<-m.done
		return m.closeErr
	}
	defer close(m.done)
	m.subMu.Lock()
	m.closed = true
	subs := m.subs
	m.subs = nil
	m.subMu.Unlock()
	m.stop()
	m.loops.Wait()
	if err := m.ml.Leave(m.cfg.LeaveTimeout); err != nil {
		m.log.Debug("membership leave not confirmed", "err", err)
	}
	m.closeErr = m.ml.Shutdown()
	for s := range subs {
		s.end()
	}
	m.wg.Wait()
	return m.closeErr
}

// maintain settles suspicions memberlist did not hold and forgets long
// dead members, every second until ctx ends.
func (m *Membership) maintain(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			m.settleSuspects(now)
			m.track.prune(now.Add(-m.forgetAfter))
			m.pruneResynced(now)
		}
	}
}

// onPacket is the transport's tap: the tracker reads every packet, and a
// packet from a member believed dead or gone, or never heard of, asks for
// a resync with it.
func (m *Membership) onPacket(buf []byte, from peer.ID) {
	m.track.observe(buf)
	if from == "" {
		return
	}
	if st := m.track.state(from); st != MemberAlive && st != MemberSuspect {
		m.askResync(from)
	}
}

// Resyncs: at most one per member per resyncEvery, and one per resyncGap
// in all (a push/pull carries every member's state: ~600 KB at 1,000).
const (
	resyncEvery = 5 * time.Second
	resyncGap   = time.Second
)

// askResync queues a state exchange with id, at most once per resyncEvery.
func (m *Membership) askResync(id peer.ID) {
	now := time.Now()
	m.resyncMu.Lock()
	last, ok := m.resynced[id]
	if ok && now.Sub(last) < resyncEvery {
		m.resyncMu.Unlock()
		return
	}
	m.resynced[id] = now
	m.resyncMu.Unlock()
	select {
	case m.resyncQ <- id:
	default:
	}
}

// resyncLoop exchanges state with members that talk to us while we
// believe them dead, or never heard of them. memberlist leaves such
// divergence to its next push/pull (30 s and more): a member declared dead
// after this member missed its refutation of a false suspicion (it was
// overloaded for a probe or two) does not refute again, the refutation is
// not gossiped again, and a joiner ignores members the member it joined
// through had as dead. A push/pull with the member teaches us its current
// incarnation at once.
func (m *Membership) resyncLoop(ctx context.Context) {
	gap := time.NewTimer(0)
	defer gap.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-gap.C:
		}
		select {
		case <-ctx.Done():
			return
		case id := <-m.resyncQ:
			if _, err := m.ml.Join([]string{id.String() + "/" + SwimAddr{id}.String()}); err != nil {
				m.log.Debug("membership resync failed", "peer", id.String(), "err", err)
			}
			gap.Reset(resyncGap)
		}
	}
}

func (m *Membership) pruneResynced(now time.Time) {
	m.resyncMu.Lock()
	defer m.resyncMu.Unlock()
	for id, at := range m.resynced {
		if now.Sub(at) > resyncEvery {
			delete(m.resynced, id)
		}
	}
}

// settleSuspects ends suspicions older than memberlist's longest suspicion
// timeout with what memberlist lists.
func (m *Membership) settleSuspects(now time.Time) {
	cutoff := now.Add(-m.maxSuspicion())
	stale := m.track.staleSuspects(cutoff)
	if len(stale) == 0 {
		return
	}
	listed := map[string]bool{}
	for _, n := range m.ml.Members() {
		listed[n.Name] = true
	}
	for _, name := range stale {
		m.track.settle(name, listed[name], cutoff)
	}
}

// maxSuspicion is memberlist's suspicion timeout without confirmations
// (state.go suspectNode, util.go suspicionTimeout), plus two probes.
func (m *Membership) maxSuspicion() time.Duration {
	scale := math.Max(1, math.Log10(float64(max(m.ml.NumMembers(), 1))))
	base := time.Duration(float64(m.cfg.SuspicionMult) * scale * float64(m.cfg.ProbeInterval))
	return time.Duration(m.cfg.SuspicionMaxTimeoutMult)*base + 2*m.cfg.ProbeInterval
}

// subscriber queues events for one Subscribe channel, so neither
// memberlist nor other subscribers wait for it.
type subscriber struct {
	ch   chan MemberEvent
	wake chan struct{}
	done chan struct{}
	once sync.Once

	mu sync.Mutex
	q  []MemberEvent
}

func (s *subscriber) push(e MemberEvent) {
	s.mu.Lock()
	s.q = append(s.q, e)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscriber) end() { s.once.Do(func() { close(s.done) }) }

func (s *subscriber) run() {
	defer close(s.ch)
	for {
		s.mu.Lock()
		q := s.q
		s.q = nil
		s.mu.Unlock()
		for _, e := range q {
			select {
			case s.ch <- e:
			case <-s.done:
				return
			}
		}
		select {
		case <-s.wake:
		case <-s.done:
			return
		}
	}
}

// startMembership runs membership on h (Config.Membership) and keeps
// joining the bootstrap peers while no other member is known.
func (h *Host) startMembership(ctx context.Context) error {
	m, err := StartMembership(ctx, h.Host, DefaultMembershipConfig(), h.log.With("component", "membership"))
	if err != nil {
		return err
	}
	h.Members = m
	h.wg.Add(1)
	go h.keepMembership(ctx)
	return nil
}

// keepMembership joins the bootstrap peers now and every RedialEvery while
// this member knows no other (at start, or after a partition healed by
// nothing else).
func (h *Host) keepMembership(ctx context.Context) {
	defer h.wg.Done()
	ids := make([]peer.ID, len(h.bootstrap))
	for i, ai := range h.bootstrap {
		ids[i] = ai.ID
	}
	if len(ids) == 0 {
		return // others join us
	}
	t := time.NewTicker(h.cfg.RedialEvery)
	defer t.Stop()
	for {
		if h.Members.NumMembers() <= 1 {
			jctx, cancel := context.WithTimeout(ctx, h.cfg.RedialEvery)
			if n, err := h.Members.Join(jctx, ids); err != nil {
				h.log.Debug("membership join failed", "err", err)
			} else {
				h.log.Debug("membership joined", "reached", n)
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
