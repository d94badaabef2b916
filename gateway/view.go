package gateway

import (
	"context"
	"log/slog"
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/multiformats/go-multiaddr"
	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/internal/tick"
	"github.com/tokenrouter/tokenrouter/nodecore"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// View is the gateway's picture of the network: one routing table per
// model, fed by gossiped announcements, the settlement peer's health
// scores, and the outcome of every call this gateway made.
type View struct {
	self      string // this gateway's peer id: its own calls are counted live, not from gossip
	now       func() time.Time
	maxAge    time.Duration
	rampStart float64 // ramp assumed for an instance settlement has not scored yet

	mu     sync.Mutex
	log    *slog.Logger
	rcfg   route.Config
	rnd    *rand.Rand
	tables map[string]*route.Table
	nodes  map[peer.ID]*nodeEntry
	health map[instanceKey]p2p.InstanceScore
	obs    observations // lies this gateway saw nodes tell (observe.go)

	// Refusals (twins.go): nodes whose peer id two hosts announce.
	twins         *nodecore.TwinDetector
	settleRefused map[peer.ID]p2p.Refusal // per the settlement peer's last report
	settleAt      time.Time               // when that report came
	refused       map[peer.ID]refusal     // refused now: out of every table
	members       memberGate              // what membership said (members.go)
}

type instanceKey struct {
	node  peer.ID
	model string
}

type nodeEntry struct {
	ann  p2p.Announcement
	seen time.Time
	down bool // its connection closed since ann: no capacity until its next announcement (Unreachable)
}

// NewView returns an empty view; announcements older than maxAge drop out.
func NewView(self string, rcfg route.Config, now func() time.Time, maxAge time.Duration, seed uint64) *View {
	return &View{
		self:      self,
		now:       now,
		maxAge:    maxAge,
		rampStart: nodecore.DefaultRampConfig().Start,
		rcfg:      rcfg,
		rnd:       rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		tables:    map[string]*route.Table{},
		nodes:     map[peer.ID]*nodeEntry{},
		health:    map[instanceKey]p2p.InstanceScore{},
		log:       slog.New(slog.DiscardHandler),
		twins:     nodecore.NewTwinDetector(nodecore.DefaultTwinConfig()),
		refused:   map[peer.ID]refusal{},
	}
}

func (v *View) table(model string) *route.Table {
	t := v.tables[model]
	if t == nil {
		t, _ = route.NewTable(v.rcfg, v.rnd) // rcfg was validated in New
		v.tables[model] = t
	}
	return t
}

// Update records a node's announcement.
func (v *View) Update(id peer.ID, a *p2p.Announcement) {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.now()
	v.twins.Observe(nodeKey(id, a), a.Addrs, a.Seq, now)
	old := v.nodes[id]
	v.nodes[id] = &nodeEntry{ann: *a, seen: now}
	if old != nil {
		for _, m := range old.ann.Models {
			if !serves(a, m.Model) {
				v.removeInstance(id, m.Model)
			}
		}
	}
	if v.reconcile(id, now) {
		return // refused: it stays out of the tables
	}
	for _, m := range a.Models {
		v.apply(id, m, a, now)
	}
}

func serves(a *p2p.Announcement, model string) bool {
	for _, m := range a.Models {
		if m.Model == model {
			return true
		}
	}
	return false
}

// apply pushes an instance's load and health into its table.
func (v *View) apply(id peer.ID, m p2p.ModelLoad, a *p2p.Announcement, now time.Time) {
	if v.members.blocks(id) {
		return // dead or left per membership: out until it is alive (members.go)
	}
	t := v.table(m.Model)
	h := t.Add(id.String())
	ramp := v.rampStart
	if s, ok := v.health[instanceKey{id, m.Model}]; ok {
		ramp = s.Ramp
	}
	t.SetHealth(h, v.tieWeight(id, m.Model)) // health × trust (observe.go)
	if e := v.nodes[id]; e != nil && e.down {
		// Unreachable: a health report or a readmission re-applying its
		// last announcement must not make a gone node a candidate again.
		t.SetLoad(h, awayLoad(m, a), now)
		return
	}
	// This gateway's share of the gossiped count is stale; Table adds its
	// live count instead.
	others := m.InFlight - m.InFlightBy[v.self]
	t.SetLoad(h, v.capped(id, m.Model, route.Load{ // capped at what it served, if it refused room (observe.go)
		Capacity:  nodecore.EffectiveCapacity(m.Capacity, ramp),
		Declared:  float64(m.Capacity),
		InFlight:  others,
		TokPerSec: a.TokPerSec,
	}, now), now)
}

func (v *View) removeInstance(id peer.ID, model string) {
	if t := v.tables[model]; t != nil {
		if h, ok := t.Lookup(id.String()); ok {
			t.Remove(h)
		}
		if t.Len() == 0 {
			delete(v.tables, model)
		}
	}
}

// Forget drops a node (it left, or its connection closed).
func (v *View) Forget(id peer.ID) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.forget(id)
}

func (v *View) forget(id peer.ID) {
	e := v.nodes[id]
	if e == nil {
		return
	}
	for _, m := range e.ann.Models {
		v.removeInstance(id, m.Model)
		delete(v.health, instanceKey{id, m.Model})
	}
	delete(v.nodes, id)
}

// expire drops nodes whose last announcement is older than maxAge.
func (v *View) expire() {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.now()
	for id, e := range v.nodes {
		if !v.fresh(e, now) {
			v.forget(id)
		}
	}
	v.twins.Sweep(now)
	v.reconcileAll(now)
}

// fresh reports whether e's node is still to be heard from at now: within
// maxAge, or twice its announced heartbeat (a node under a wide gossip
// budget announces seldom; membership says when it is gone).
func (v *View) fresh(e *nodeEntry, now time.Time) bool {
	return now.Sub(e.seen) <= max(v.maxAge, 2*e.ann.Every()+time.Second)
}

// SetReport records the settlement peer's health scores and ramp-up.
func (v *View) SetReport(r *p2p.HealthReport) {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.now()
	if r.RampStart > 0 && r.RampStart <= 1 {
		v.rampStart = r.RampStart
	}
	v.setSettleRefused(r.Refused, now)
	for _, s := range r.Scores {
		id, err := peer.Decode(s.Node)
		if err != nil {
			continue
		}
		if s.Score <= 0 || s.Score > 1 || s.Ramp <= 0 || s.Ramp > 1 {
			continue
		}
		v.health[instanceKey{id, s.Model}] = s
		if _, no := v.refused[id]; no {
			continue
		}
		if e := v.nodes[id]; e != nil {
			for _, m := range e.ann.Models {
				if m.Model == s.Model {
					v.apply(id, m, &e.ann, now)
				}
			}
		}
	}
}

// HasModel reports whether a call for model is routed, or refused only
// for the moment (route.Table.Routable); GET /v1/models lists the same
// models (Listed, listing.go).
func (v *View) HasModel(model string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	t := v.tables[model]
	return t != nil && t.Routable(v.now())
}

// Lease is one call's hold on an instance; Done must be called once.
type Lease struct {
	v     *View
	model string
	id    string
	h     route.Handle
	once  sync.Once
}

// Acquire picks an instance of model, skipping nodes already tried, and
// counts the call in flight on it.
func (v *View) Acquire(model string, tried []peer.ID) (peer.ID, *Lease, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	t := v.tables[model]
	if t == nil {
		return "", nil, false
	}
	var buf [4]route.Handle
	exclude := buf[:0]
	for _, id := range tried {
		if h, ok := t.Lookup(id.String()); ok {
			exclude = append(exclude, h)
		}
	}
	h := t.Pick(v.now(), exclude)
	if h == route.None {
		return "", nil, false
	}
	info, _ := t.Info(h, v.now())
	id, err := peer.Decode(info.ID)
	if err != nil { // cannot happen: ids come from peer.ID.String
		t.Release(h, route.Neutral, v.now())
		return "", nil, false
	}
	return id, &Lease{v: v, model: model, id: info.ID, h: h}, true
}

// Done ends the call with its outcome; tokens and span, when the call was a
// stream, are what the gateway measured between first and last token.
func (l *Lease) Done(o route.Outcome, tokens int64, span time.Duration) {
	l.once.Do(func() {
		v := l.v
		v.mu.Lock()
		defer v.mu.Unlock()
		t := v.tables[l.model]
		if t == nil {
			return
		}
		if h, ok := t.Lookup(l.id); !ok || h != l.h {
			return // the instance left and its handle may serve another now
		}
		now := v.now()
		t.Release(l.h, o, now)
		if tokens >= 2 {
			t.ObserveRate(l.h, tokens, span, now)
		}
	})
}

// InstanceInfo is one live instance as this gateway sees it.
type InstanceInfo struct {
	Node      string  `json:"node"`
	Hardware  string  `json:"hardware,omitempty"`
	Synthetic bool    `json:"synthetic,omitempty"`
	Declared  int     `json:"capacity"`
	RampUp    float64 `json:"ramp_up"` // fraction of declared capacity it may use
	RampPct   float64 `json:"ramp_up_percent"`
	Health    float64 `json:"health_score"` // the settlement peer's score; 0 until scored
	AgeMs     int64   `json:"announced_ms_ago"`
	// A refused instance (state "refused", in /debug/instances only): why,
	// who decided (this gateway or the settlement peer) and for how long.
	Status    string `json:"status,omitempty"`
	Reason    string `json:"reason,omitempty"`
	RefusedBy string `json:"refused_by,omitempty"`
	RefusedMs int64  `json:"refused_ms,omitempty"`
	route.Info
}

// ModelInfo is one model and its live instances.
type ModelInfo struct {
	ID        string         `json:"id"`
	Instances []InstanceInfo `json:"instances"`
}

// Models lists every model with a live instance, sorted by id.
func (v *View) Models() []ModelInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.now()
	out := make([]ModelInfo, 0, len(v.tables))
	for model, t := range v.tables {
		mi := ModelInfo{ID: model}
		for _, h := range t.Handles() {
			ri, ok := t.Info(h, now)
			if !ok {
				continue
			}
			id, _ := peer.Decode(ri.ID)
			ii := InstanceInfo{Node: ri.ID, Info: ri, RampUp: v.rampStart}
			if e := v.nodes[id]; e != nil {
				ii.Hardware, ii.Synthetic, ii.AgeMs = e.ann.Hardware, e.ann.Synthetic, now.Sub(e.seen).Milliseconds()
				for _, m := range e.ann.Models {
					if m.Model == model {
						ii.Declared = m.Capacity
					}
				}
			}
			if s, ok := v.health[instanceKey{id, model}]; ok {
				ii.RampUp, ii.Health = s.Ramp, s.Score
			}
			ii.RampPct = math.Round(ii.RampUp*1000) / 10
			mi.Instances = append(mi.Instances, ii)
		}
		sort.Slice(mi.Instances, func(i, j int) bool { return mi.Instances[i].Node < mi.Instances[j].Node })
		out = append(out, mi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// follow feeds announcements from sub into the view until ctx ends, and
// teaches the peerstore where each node listens. Nodes whose claims are
// for another settlement peer than platform are left out: this gateway's
// receipts for them would be refused, and they would serve unpaid.
func (v *View) follow(ctx context.Context, h *p2p.Host, sub *pubsub.Subscription, platform string, log *slog.Logger) {
	v.mu.Lock()
	v.log = log
	v.obs.scores = h.Scores // what it sees feeds GossipSub's scores too (observe.go)
	v.mu.Unlock()
	twins := make(chan struct{})
	go func() { defer close(twins); v.watchTwins(ctx, h) }()
	defer func() { <-twins }()
	warned := map[peer.ID]bool{}
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			return
		}
		from := msg.GetFrom()
		if s, ok := msg.ValidatorData.(*p2p.StrayAnnouncement); ok {
			if s.Platform == platform {
				v.Stray(from, &s.Announcement)
			}
			continue
		}
		a, ok := msg.ValidatorData.(*p2p.Announcement)
		if !ok {
			continue
		}
		if a.Platform != platform {
			if !warned[from] && len(warned) < 1000 {
				warned[from] = true
				log.Warn("a node settles with another platform; not routing to it", "node", from.String(), "its_platform", a.Platform)
			}
			continue
		}
		for _, s := range a.Addrs {
			if m, err := multiaddr.NewMultiaddr(s); err == nil {
				if tr, _ := peer.SplitAddr(m); tr != nil {
					h.Peerstore().AddAddr(from, tr, peerstore.TempAddrTTL)
				}
			}
		}
		v.Update(from, a)
	}
}

// expireLoop drops silent nodes every interval until ctx ends.
func (v *View) expireLoop(ctx context.Context, every time.Duration) {
	tick.Every(ctx, every, func(time.Time) { v.expire() })
}

// watchConnections takes a node out of the candidates as soon as this
// gateway's last connection to it closes (a killed node stops getting calls
// at once, not after the announcement timeout). Its breaker and health
// state stay; its next announcement makes it a candidate again, and so
// does a new connection to it: a closed connection is not always a dead
// node (the connection manager trims idle ones, and under a wide gossip
// budget the next announcement may be minutes away), so the gateway dials
// it once, and a live node is back within a round trip.
func (v *View) watchConnections(ctx context.Context, h *p2p.Host, wg *sync.WaitGroup) error {
	sub, err := h.EventBus().Subscribe(new(event.EvtPeerConnectednessChanged))
	if err != nil {
		return err
	}
	wg.Go(func() {
		defer sub.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-sub.Out():
				if !ok {
					return
				}
				switch ev := e.(event.EvtPeerConnectednessChanged); ev.Connectedness {
				case network.NotConnected:
					if v.Unreachable(ev.Peer) {
						wg.Go(func() { v.redial(ctx, h, ev.Peer) })
					}
				case network.Connected:
					v.reachable(ev.Peer)
				}
			}
		}
	})
	return nil
}

// redialTimeout bounds the one dial a gateway makes to a node whose
// connection closed: a few round trips, or a relay's.
const redialTimeout = 5 * time.Second

// redial dials a node whose last connection closed, once; the Connected
// event that follows success makes it reachable again.
func (v *View) redial(ctx context.Context, h *p2p.Host, id peer.ID) {
	dctx, cancel := context.WithTimeout(ctx, redialTimeout)
	defer cancel()
	h.Connect(dctx, peer.AddrInfo{ID: id}) // an error leaves it away: it is what we expected of a dead node
}

// reachable undoes Unreachable for a node this gateway is connected to
// again, unless membership says it is gone or it is refused.
func (v *View) reachable(id peer.ID) {
	v.mu.Lock()
	defer v.mu.Unlock()
	e := v.nodes[id]
	if e == nil || !e.down || v.members.blocks(id) {
		return
	}
	if _, refused := v.refused[id]; refused {
		return
	}
	now := v.now()
	if !v.fresh(e, now) {
		return
	}
	e.down = false
	for _, m := range e.ann.Models {
		v.apply(id, m, &e.ann, now)
	}
}

// Unreachable marks every instance of a node as away (no candidate; its
// model stays listed, listing.go) until its next announcement or a new
// connection to it. It reports whether the node was known.
func (v *View) Unreachable(id peer.ID) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	e := v.nodes[id]
	if e == nil {
		return false
	}
	e.down = true
	now := v.now()
	for _, m := range e.ann.Models {
		if t := v.tables[m.Model]; t != nil {
			if h, ok := t.Lookup(id.String()); ok {
				t.SetLoad(h, awayLoad(m, &e.ann), now)
			}
		}
	}
	return true
}

// passedOver names the instances of model that no call can go to now, and
// why: parked (breaker open), below the floor, or full.
func (v *View) passedOver(model string) map[string]string {
	v.mu.Lock()
	defer v.mu.Unlock()
	t := v.tables[model]
	if t == nil {
		return nil
	}
	now := v.now()
	out := map[string]string{}
	for _, h := range t.Handles() {
		info, ok := t.Info(h, now)
		switch {
		case !ok || info.Away || info.Candidate:
		case info.State == route.Parked.String():
			out[info.ID] = p2p.PassedParked
		case info.State == route.BelowFloor.String():
			out[info.ID] = p2p.PassedFloor
		case info.Routable && info.Spare <= 0:
			out[info.ID] = p2p.PassedFull
		}
	}
	return out
}
