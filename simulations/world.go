package simulations

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/nodecore"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// epoch0 is the simulated start: a fixed date, so a run never depends on
// the wall clock.
var epoch0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()

// warmup is how long before the start the first nodes come online, so that
// every gateway has heard of them when the first call arrives.
const warmup = int64(30 * time.Second)

// node is one operator's machine. Its identity may change (a Sybil takes a
// fresh one); the operator, and what it earned, stay.
type node struct {
	id        string
	gen       int32 // identity generation
	group     int32
	model     int32
	capacity  int32 // calls it really serves at once
	declared  int32 // calls it announces
	tokS      float64
	claimed   float64 // rate it announces (0 until it measured itself)
	ttft      int64
	firstSeen int64 // of this identity
	online    bool
	failing   bool // in a failure episode
	epoch     int32
	inFlight  int32
	byGW      []int32 // calls in flight per gateway
	calls     int32   // head of its in-flight calls list (-1 = none)

	announcing   bool
	lastAnnounce int64
	switchedAt   int64 // last model switch (0 = never)
	windows      map[int32]*nodecore.HealthWindow
	score        float64 // cached at scoreTick for scoreModel and scoreGen
	scoreTick    int64
	scoreModel   int32
	scoreGen     int32

	// Accounting, kept across identities.
	served, failures, neutral int64
	earned                    int64
	onlineNs, onlineSince     int64
	identities, switches      int64
	parks                     int64
	faultyParks               int64
}

// maxTries bounds the instances one call tries: the gateway's retries
// after failures plus route.MaxFullTries answers of 429.
const maxTries = 3 + route.MaxFullTries

// call is one consumer call in flight.
type call struct {
	gen            uint32
	live           bool
	node, gw       int32
	model          int32
	prompt, output int32
	bad            bool
	tries          int8 // attempts that failed or are under way (a 429 is not one)
	fulls          int8 // attempts answered 429
	excl           [maxTries]int32
	nexcl          int8
	began          int64 // when the node took it
	fails          bool  // this attempt fails
	measuring      bool  // its node had not announced a measured rate yet
	prev, next     int32 // its node's in-flight list
	nodeEpoch      int32
}

type gateway struct {
	delay     int64
	rnd       *rand.Rand
	pickers   []picker // per model
	listedAs  []int32  // per node: the model it is listed under, or -1
	listedGen []int32  // per node: the identity listed
}

// world is one run's whole state.
type world struct {
	sc     *Scenario
	policy string
	now    int64
	end    int64
	seq    uint64
	q      eventHeap

	rArrive, rCall, rNode *rand.Rand

	models   []ModelSpec
	prices   []economy.Price
	demand   []float64 // cumulative weights (without swing)
	nodes    []node
	groups   []groupAcc
	gws      []gateway
	calls    []call
	freeCall []int32

	rcfg   route.Config
	hcfg   nodecore.HealthConfig
	ramp   nodecore.RampConfig
	terms  economy.Terms
	flap   economy.FlapConfig
	trust  economy.TrustConfig
	bcfg   economy.BountyConfig
	bounty []economy.Bounty // per model; zero = none

	// Running totals.
	stats       stats
	modelFlight []int64 // calls in flight per model
	modelDecl   []int64 // declared capacity online per model
	refusedMin  []int64 // refusals per model since the last bounty pass
	series      seriesAcc
	progress    func(done, total int64)

	shareWhenIdle *idleShare // set when a ratio asks for share_when_idle
	publishTick   int64      // health publications so far
}

func newWorld(sc *Scenario, seed uint64, policy string) (*world, error) {
	w := &world{sc: sc, policy: policy, now: epoch0 - warmup, end: epoch0 + int64(sc.Duration)}
	w.rArrive = rand.New(rand.NewPCG(seed, 1))
	w.rCall = rand.New(rand.NewPCG(seed, 2))
	w.rNode = rand.New(rand.NewPCG(seed, 3))

	w.rcfg = route.DefaultConfig()
	{
		r := sc.Route
		if r.TieBand > 0 {
			w.rcfg.TieBand = r.TieBand
		}
		if r.FloorTokPerSec > 0 {
			w.rcfg.FloorTokPerSec = r.FloorTokPerSec
		}
		if r.FailuresToPark > 0 {
			w.rcfg.FailuresToPark = r.FailuresToPark
		}
		if r.FailureWindow > 0 {
			w.rcfg.FailureWindow = r.FailureWindow.D()
		}
		if r.ParkFor > 0 {
			w.rcfg.ParkFor = r.ParkFor.D()
		}
	}
	if err := w.rcfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: route: %v", ErrBadParam, err)
	}
	w.hcfg = nodecore.DefaultHealthConfig()
	w.hcfg.Window, w.hcfg.Bucket = sc.Reputation.Window.D(), sc.Reputation.Bucket.D()
	w.ramp = nodecore.RampConfig{Start: sc.Reputation.RampStart, Period: sc.Reputation.RampPeriod.D()}
	w.terms = economy.Terms{ProviderBps: sc.Economy.ProviderBps, PoolBps: sc.Economy.PoolBps}
	w.flap = economy.FlapConfig{Cut: sc.Economy.FlapCut, Decay: sc.Economy.FlapDecay.D()}
	w.trust = economy.DefaultTrustConfig()
	if sc.Economy.EstablishedAt > 0 {
		w.trust.EstablishedAge = sc.Economy.EstablishedAt.D()
	}
	if sc.Economy.TrustedAt > 0 {
		w.trust.TrustedAge = sc.Economy.TrustedAt.D()
	}
	w.bcfg = economy.DefaultBountyConfig()
	if sc.Economy.BountyTarget > 0 {
		w.bcfg.Target = sc.Economy.BountyTarget
	}
	for _, err := range []error{w.hcfg.Validate(), w.ramp.Validate(), w.terms.Validate(), w.flap.Validate(), w.trust.Validate(), w.bcfg.Validate()} {
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadParam, err)
		}
	}

	w.models = sc.Models
	sum := 0.0
	for _, m := range sc.Models {
		w.prices = append(w.prices, economy.Price{InputPer1M: m.PriceInput, OutputPer1M: m.PriceOutput})
		sum += m.Demand
		w.demand = append(w.demand, sum)
	}
	nm := len(sc.Models)
	w.bounty = make([]economy.Bounty, nm)
	w.modelFlight = make([]int64, nm)
	w.modelDecl = make([]int64, nm)
	w.refusedMin = make([]int64, nm)
	w.stats.init(nm)

	total := 0
	for _, g := range sc.Nodes {
		total += g.Count
	}
	w.nodes = make([]node, 0, total)
	w.groups = make([]groupAcc, len(sc.Nodes))
	for gi, g := range sc.Nodes {
		w.groups[gi].name = g.Name
		for range g.Count {
			i := int32(len(w.nodes))
			model := int32(w.modelIndex(g.Model, int(i)))
			n := node{
				group: int32(gi), model: model, capacity: int32(g.Capacity), declared: int32(g.Declared),
				tokS: g.TokPerSec, ttft: int64(g.TTFT), calls: -1, claimed: g.ClaimedTokS,
			}
			n.byGW = make([]int32, sc.Gateways.Count)
			w.nodes = append(w.nodes, n)
			w.groups[gi].nodes++
			at := epoch0 + int64(g.JoinAt)
			if g.JoinAt > 0 {
				at += w.rNode.Int64N(int64(time.Second)) // not all in the same instant
			} else {
				at -= warmup // the network is up when consumers start calling
			}
			w.nodes[i].firstSeen = at - int64(g.Age)
			w.schedule(at, evJoin, i, 0, 0)
		}
	}

	w.gws = make([]gateway, sc.Gateways.Count)
	for g := range w.gws {
		gw := &w.gws[g]
		gw.delay = int64(sc.Gateways.GossipDelay)
		if j := int64(sc.Gateways.GossipJitter); j > 0 {
			gw.delay += w.rNode.Int64N(j + 1)
		}
		gw.rnd = rand.New(rand.NewPCG(seed, 100+uint64(g)))
		for m := range nm {
			p, err := w.newPicker(gw.rnd, m)
			if err != nil {
				return nil, err
			}
			gw.pickers = append(gw.pickers, p)
		}
	}

	w.series.init(w)
	w.schedule(epoch0, evArrival, 0, 0, 0)
	w.schedule(epoch0, evSample, 0, 0, 0)
	w.schedule(epoch0+int64(sc.Reputation.PublishEvery), evPublish, 0, 0, 0)
	if sc.Economy.Bounties {
		w.schedule(epoch0+int64(max(sc.Economy.BountiesFrom, 1)), evBounty, 0, 0, 0)
	}
	return w, nil
}

func (w *world) modelIndex(name string, i int) int {
	if name == "" {
		return i % len(w.models)
	}
	for m, s := range w.models {
		if s.Name == name {
			return m
		}
	}
	return 0
}

func (w *world) schedule(at int64, k kind, a, b, c int32) {
	w.seq++
	w.q.push(event{at: at, seq: w.seq, kind: k, a: a, b: b, c: c})
}

func (w *world) time() time.Time { return time.Unix(0, w.now).UTC() }

// run processes events until the simulated end.
func (w *world) run() {
	total := w.end - epoch0
	nextReport := int64(0)
	for len(w.q) > 0 {
		e := w.q.pop()
		if e.at > w.end {
			break
		}
		w.now = e.at
		if w.progress != nil && w.now-epoch0 >= nextReport {
			w.progress(w.now-epoch0, total)
			nextReport = w.now - epoch0 + total/1000
		}
		w.handle(e)
	}
	w.now = w.end
	for i := range w.nodes {
		if n := &w.nodes[i]; n.online {
			n.onlineNs += w.now - n.onlineSince
			n.onlineSince = w.now
		}
	}
}

func (w *world) handle(e event) {
	switch e.kind {
	case evArrival:
		w.arrival()
	case evCallEnd:
		w.callEnd(e.a, uint32(e.b))
	case evAnnounce:
		w.announce(e.a)
	case evDeliver:
		w.deliver(e.a, e.b, e.c)
	case evRemove:
		w.remove(e.a, e.b)
	case evSample:
		w.sample()
	case evPublish:
		w.publish()
	case evProbe:
		w.probe(e.a)
	case evBounty:
		w.bounties()
	case evEpisode:
		w.episode(e.a, e.b == 1)
	case evChurn:
		w.churn(e.a, e.b == 1)
	case evIdentity:
		w.identity(e.a)
	case evFollow:
		w.follow(e.a)
	case evJoin:
		w.join(e.a)
	}
}

// exp draws an exponential duration with mean d.
func exp(r *rand.Rand, d Duration) int64 {
	return int64(r.ExpFloat64() * float64(d))
}

func uniform(r *rand.Rand, ir IntRange) int32 {
	if ir.Max <= ir.Min {
		return int32(ir.Min)
	}
	return int32(ir.Min + r.IntN(ir.Max-ir.Min+1))
}

// rate is the arrival rate now, with each model's daily swing.
func (w *world) demandOf(m int) float64 {
	s := w.models[m]
	d := s.Demand
	if s.Swing > 0 {
		h := float64(w.now-epoch0)/float64(time.Hour) + s.SwingPhase
		d *= 1 + s.Swing*math.Sin(2*math.Pi*h/24)
	}
	return d
}

func (w *world) chooseModel() (int, float64) {
	swing := false
	for _, m := range w.models {
		swing = swing || m.Swing > 0
	}
	if !swing {
		x := w.rArrive.Float64() * w.demand[len(w.demand)-1]
		for m, c := range w.demand {
			if x < c {
				return m, 1
			}
		}
		return len(w.demand) - 1, 1
	}
	var sum, base float64
	for m := range w.models {
		sum += w.demandOf(m)
		base += w.models[m].Demand
	}
	x := w.rArrive.Float64() * sum
	for m := range w.models {
		if x -= w.demandOf(m); x < 0 {
			return m, sum / base
		}
	}
	return len(w.models) - 1, sum / base
}
