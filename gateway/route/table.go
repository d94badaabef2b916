package route

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"time"
)

// Config is the routing policy's parameters.
type Config struct {
	TieBand        float64       // candidates within this much spare capacity of the best tie
	Levels         int           // spare capacity resolution: buckets between 0 and 1
	FloorTokPerSec float64       // below this sustained rate an instance is not a candidate
	FloorSamples   int           // measured streams before the floor judges an instance
	FloorRetry     time.Duration // how long an instance under the floor waits for a fresh measurement
	FailuresToPark int           // failures within FailureWindow that park an instance
	FailureWindow  time.Duration // the window failures are counted in
	ParkFor        time.Duration // how long a parked instance gets no traffic before its probe
	RateAlpha      float64       // weight of a new rate sample in the moving average
}

// DefaultConfig returns SPEC §4's policy.
func DefaultConfig() Config {
	return Config{
		TieBand:        0.05,             // an idle node and one at 1/40 load are equal; 3/10 is not
		Levels:         100,              // 1% resolution: finer than the tie band
		FloorTokPerSec: 5,                // SPEC: the 5 tok/s floor
		FloorSamples:   2,                // one slow stream is a hiccup; two is a pattern
		FloorRetry:     time.Minute,      // a slow node gets a fresh chance every minute
		FailuresToPark: 3,                // SPEC: 3 failures ...
		FailureWindow:  60 * time.Second, // ... within 60 s ...
		ParkFor:        15 * time.Second, // ... park for 15 s
		RateAlpha:      0.3,              // a rate that changes shows within a few calls
	}
}

// Validate reports a policy that cannot work.
func (c Config) Validate() error {
	switch {
	case c.TieBand < 0 || c.TieBand > 1:
		return fmt.Errorf("route: tie band %v outside [0,1]", c.TieBand)
	case c.Levels < 1 || c.Levels > 4096:
		return fmt.Errorf("route: levels %d outside [1,4096]", c.Levels)
	case c.FloorTokPerSec < 0 || c.FloorSamples < 1 || c.FloorRetry <= 0:
		return errors.New("route: floor needs a rate >= 0, samples >= 1 and a positive retry")
	case c.FailuresToPark < 1 || c.FailuresToPark > maxFailures || c.FailureWindow <= 0 || c.ParkFor <= 0:
		return fmt.Errorf("route: breaker needs 1..%d failures and positive windows", maxFailures)
	case c.RateAlpha <= 0 || c.RateAlpha > 1:
		return errors.New("route: rate alpha outside (0,1]")
	}
	return nil
}

const maxFailures = 8

// MaxFullTries bounds how many instances answering 429 (full) one call
// tries. A node's 429 is not a failure and does not use up the gateway's
// retries: it answers 503 no_capacity only when every instance in its view
// is full or parked (SPEC §3), and a stale view that thought a node had
// room costs a round trip, not the consumer's call.
const MaxFullTries = 16

// Handle names an instance in a Table.
type Handle int32

// None is the Handle Pick returns when there is no candidate.
const None Handle = -1

// State is where an instance stands with the breaker and the floor.
type State uint8

// States. Parked, HalfOpen and Probing are the breaker's open and half-open
// states; BelowFloor is the floor's.
const (
	Closed     State = iota // a candidate
	Parked                  // too many failures: no traffic until its probe is due
	HalfOpen                // the park is over: the next pick is its one probe
	Probing                 // the probe is in flight: no other traffic
	BelowFloor              // measured under the floor: no traffic until FloorRetry passed
)

var stateNames = [...]string{"closed", "parked", "half-open", "probing", "below-floor"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", s)
}

// Breaker is the breaker's view of a state: closed, open or half-open.
func (s State) Breaker() string {
	switch s {
	case Parked:
		return "open"
	case HalfOpen, Probing:
		return "half-open"
	}
	return "closed"
}

// Outcome is how a call on an instance ended.
type Outcome uint8

// Outcomes.
const (
	Success Outcome = iota // answered
	Failure                // 5xx, timeout, broken stream, refused connection
	Neutral                // the consumer's own 4xx, or a client that left: says nothing of the node
	Full                   // the node's 429: at capacity, not failing
)

var outcomeNames = [...]string{"success", "failure", "neutral", "full"}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return fmt.Sprintf("outcome(%d)", o)
}

// MaxWeight is the tie weight of a perfectly healthy instance; health scores
// in (0,1] map onto 1..MaxWeight.
const MaxWeight = 1000

type instance struct {
	id       string
	live     bool
	state    State
	capacity float64 // effective capacity (ramp-up applied by the caller)
	declared float64 // declared capacity: the headroom above capacity is spill-over
	gossip   int     // in-flight per its last announcement
	local    int     // this gateway's calls in flight
	weight   int32   // tie weight, 1..MaxWeight
	placedW  int32   // the weight counted in its bucket's sum
	level    int32   // bucket, or -1 when not a candidate
	set      uint8   // which bucketSet level is in: preferred or spill
	pos      int32   // index in its bucket
	until    int64   // Parked / BelowFloor: when it ends (unix ns)
	timerGen uint32  // invalidates stale timer entries
	fails    [maxFailures]int64
	nfails   int
	rate     float64 // measured tok/s (moving average)
	samples  int
	claimed  float64 // the node's own rate claim
	away     bool    // cannot be reached now (Load.Away)
}

// Table holds the instances of one model. It is not safe for concurrent
// use; the caller serialises access.
type Table struct {
	cfg    Config
	rnd    *rand.Rand
	insts  []instance
	free   []Handle
	byID   map[string]Handle
	sets   [2]bucketSet // preferred: spare within effective capacity; spill: only declared headroom left
	band   int
	timers timerHeap

	// Calls in flight on every instance: per gossip (other gateways') and
	// this gateway's own. When others hold most of them, this gateway is one
	// of many routing on the same stale view (see Pick).
	gossipSum, localSum int64
}

// The two candidate sets. Ramp-up shapes who is preferred, never whether a
// consumer is served: while any instance has spare effective capacity only
// those are drawn; when none has, the declared headroom of ramping
// instances is used rather than refusing the call.
const (
	preferred = 0
	spill     = 1
)

// bucketSet holds candidates in buckets by spare capacity.
type bucketSet struct {
	buckets  [][]Handle
	sums     []int64
	maxW     []int32
	occupied []uint64
}

func newBucketSet(n int) bucketSet {
	return bucketSet{
		buckets:  make([][]Handle, n),
		sums:     make([]int64, n),
		maxW:     make([]int32, n),
		occupied: make([]uint64, (n+63)/64),
	}
}

// NewTable returns an empty table drawing randomness from rnd.
func NewTable(cfg Config, rnd *rand.Rand) (*Table, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if rnd == nil {
		return nil, errors.New("route: a random source is required")
	}
	n := cfg.Levels + 1
	return &Table{
		cfg:  cfg,
		rnd:  rnd,
		byID: map[string]Handle{},
		sets: [2]bucketSet{newBucketSet(n), newBucketSet(n)},
		band: int(math.Round(cfg.TieBand * float64(cfg.Levels))),
	}, nil
}

// Len is the number of instances in the table.
func (t *Table) Len() int { return len(t.byID) }

// Lookup returns the handle of id.
func (t *Table) Lookup(id string) (Handle, bool) {
	h, ok := t.byID[id]
	return h, ok
}

// Add inserts an instance (idempotent) and returns its handle. A new
// instance has no capacity until SetLoad and full weight until SetHealth.
func (t *Table) Add(id string) Handle {
	if h, ok := t.byID[id]; ok {
		return h
	}
	var h Handle
	if n := len(t.free); n > 0 {
		h = t.free[n-1]
		t.free = t.free[:n-1]
	} else {
		h = Handle(len(t.insts))
		t.insts = append(t.insts, instance{})
	}
	t.insts[h] = instance{id: id, live: true, weight: MaxWeight, level: -1}
	t.byID[id] = h
	return h
}

// Remove drops an instance (it left the network). Calls still in flight
// may Release it; that is a no-op.
func (t *Table) Remove(h Handle) {
	in := t.get(h)
	if in == nil {
		return
	}
	t.unplace(h)
	t.setGossip(in, 0)
	t.localSum -= int64(in.local)
	delete(t.byID, in.id)
	in.live = false
	in.timerGen++
	t.free = append(t.free, h)
}

func (t *Table) get(h Handle) *instance {
	if h < 0 || int(h) >= len(t.insts) || !t.insts[h].live {
		return nil
	}
	return &t.insts[h]
}

// Load is an instance's announced load.
type Load struct {
	Capacity  float64 // effective capacity: declared with ramp-up applied
	Declared  float64 // declared capacity; below Capacity counts as Capacity
	InFlight  int     // calls in flight, less this gateway's own
	TokPerSec float64 // the node's own rate claim (0 = not measured)
	// Away: the node cannot be reached now (its connection closed, or
	// membership suspects it) but is not known gone. It is no candidate
	// until a load without Away, yet keeps its model routable (Routable):
	// a call then gets 503 no_capacity, retry shortly, not 404.
	Away bool
}

// SetLoad records an instance's announced load.
func (t *Table) SetLoad(h Handle, l Load, now time.Time) {
	in := t.get(h)
	if in == nil {
		return
	}
	in.capacity = max(l.Capacity, 0)
	in.declared = max(l.Declared, in.capacity)
	t.setGossip(in, max(l.InFlight, 0))
	in.claimed = max(l.TokPerSec, 0)
	in.away = l.Away
	t.advance(now.UnixNano())
	if in.state == Closed && in.samples == 0 && in.claimsBelow(t.cfg.FloorTokPerSec) {
		// The node says itself it is under the floor.
		t.setTimer(h, BelowFloor, now.UnixNano()+int64(t.cfg.FloorRetry))
	}
	t.place(h)
}

// claimsBelow reports whether the node's own rate claim is under floor.
func (in *instance) claimsBelow(floor float64) bool {
	return in.claimed > 0 && in.claimed < floor
}

// SetHealth sets the tie weight from a health score in (0,1].
func (t *Table) SetHealth(h Handle, score float64) {
	in := t.get(h)
	if in == nil {
		return
	}
	w := int32(math.Round(score * MaxWeight))
	in.weight = min(max(w, 1), MaxWeight)
	t.place(h)
}

func (t *Table) setGossip(in *instance, n int) {
	t.gossipSum += int64(n - in.gossip)
	in.gossip = n
}

// Herding. When this gateway holds most of the calls in flight, its view is
// nearly fresh and least-loaded is best. When other gateways hold most of
// them (HerdShare or more), every gateway routes on the same second-old
// picture: least-loaded would send them all to the same idlest instances,
// filling them while others idle (the simulator's herd scenario: 8% of
// calls refused at 60% load with 100 gateways). Then Pick takes the better
// of two candidates drawn at random, which spreads a herd's calls.
const (
	HerdShare    = 0.75 // others' share of calls in flight that makes this gateway one of many (4 or more alike)
	herdMinCalls = 8    // below this many calls in flight, no herd to speak of
)

// herd reports whether this gateway is one of many routing on gossip.
func (t *Table) herd() bool {
	total := t.gossipSum + t.localSum
	return total >= herdMinCalls && float64(t.gossipSum) >= HerdShare*float64(total)
}

// Pick chooses an instance for one call and counts the call in flight on
// it; Release must follow. exclude lists instances already tried for this
// call. It returns None when no instance has spare capacity.
func (t *Table) Pick(now time.Time, exclude []Handle) Handle {
	t.advance(now.UnixNano())
	for _, h := range exclude {
		t.unplace(h)
	}
	var h Handle
	if t.herd() {
		h = t.drawTwo()
	} else {
		h = t.draw()
	}
	if h != None {
		in := &t.insts[h]
		in.local++
		t.localSum++
		if in.state == HalfOpen {
			in.state = Probing // the one probe
		}
		t.place(h)
	}
	for _, x := range exclude {
		t.place(x)
	}
	return h
}

// draw picks among the candidates in the best band of the preferred set,
// or of the spill set when no instance has effective capacity to spare.
func (t *Table) draw() Handle {
	if h := t.drawFrom(&t.sets[preferred], t.band); h != None {
		return h
	}
	return t.drawFrom(&t.sets[spill], t.band)
}

// drawTwo draws two distinct preferred candidates at random (weighted by
// health) and takes the one with more spare capacity.
func (t *Table) drawTwo() Handle {
	s := &t.sets[preferred]
	a := t.drawFrom(s, t.cfg.Levels)
	if a == None {
		return t.drawFrom(&t.sets[spill], t.band)
	}
	t.unplace(a)
	b := t.drawFrom(s, t.cfg.Levels)
	t.place(a)
	if b != None && t.insts[b].level > t.insts[a].level {
		return b
	}
	return a
}

// drawFrom draws from the candidates within band levels of s's best.
func (t *Table) drawFrom(s *bucketSet, band int) Handle {
	best := s.highest()
	if best < 0 {
		return None
	}
	lo := max(best-band, 0)
	var total int64
	for b := lo; b <= best; b++ {
		total += s.sums[b]
	}
	x := t.rnd.Int64N(total)
	b := best
	for ; b > lo; b-- {
		if x < s.sums[b] {
			break
		}
		x -= s.sums[b]
	}
	members := s.buckets[b]
	maxW := s.maxW[b]
	for {
		h := members[t.rnd.IntN(len(members))]
		if w := t.insts[h].weight; w >= maxW || t.rnd.Int32N(maxW) < w {
			return h
		}
	}
}

// highest returns the best occupied bucket, or -1.
func (s *bucketSet) highest() int {
	for i := len(s.occupied) - 1; i >= 0; i-- {
		if w := s.occupied[i]; w != 0 {
			return i*64 + bits.Len64(w) - 1
		}
	}
	return -1
}

// Release ends a call picked on h with its outcome.
func (t *Table) Release(h Handle, o Outcome, now time.Time) {
	in := t.get(h)
	if in == nil {
		return
	}
	if in.local > 0 {
		in.local--
		t.localSum--
	}
	ns := now.UnixNano()
	t.advance(ns)
	switch o {
	case Success:
		if in.state == Probing {
			in.state, in.nfails = Closed, 0 // readmitted fully
		}
	case Failure:
		t.fail(h, ns)
	case Full:
		t.setGossip(in, max(in.gossip, int(math.Ceil(in.declared)))) // no spare until its next announcement
		if in.state == Probing {
			in.state = HalfOpen // the probe told us nothing: the next call probes
		}
	case Neutral:
		if in.state == Probing {
			in.state = HalfOpen
		}
	}
	t.place(h)
}

func (t *Table) fail(h Handle, ns int64) {
	in := &t.insts[h]
	if in.state == Probing || in.state == HalfOpen {
		t.setTimer(h, Parked, ns+int64(t.cfg.ParkFor))
		return
	}
	// Keep the most recent failures; count those inside the window.
	copy(in.fails[1:], in.fails[:maxFailures-1])
	in.fails[0] = ns
	in.nfails = min(in.nfails+1, maxFailures)
	recent := 0
	for i := 0; i < in.nfails; i++ {
		if ns-in.fails[i] < int64(t.cfg.FailureWindow) {
			recent++
		}
	}
	if recent >= t.cfg.FailuresToPark && in.state == Closed {
		in.nfails = 0
		t.setTimer(h, Parked, ns+int64(t.cfg.ParkFor))
	}
}

// ObserveRate records the generation rate this gateway measured on a stream
// it relayed: tokens over the time between the first and last of them.
func (t *Table) ObserveRate(h Handle, tokens int64, d time.Duration, now time.Time) {
	in := t.get(h)
	if in == nil || tokens < 2 || d <= 0 {
		return
	}
	r := float64(tokens-1) / d.Seconds()
	if in.samples == 0 {
		in.rate = r
	} else {
		in.rate += t.cfg.RateAlpha * (r - in.rate)
	}
	in.samples++
	if in.state == Closed && in.samples >= t.cfg.FloorSamples && in.rate < t.cfg.FloorTokPerSec {
		t.setTimer(h, BelowFloor, now.UnixNano()+int64(t.cfg.FloorRetry))
		t.place(h)
	}
}

func (t *Table) setTimer(h Handle, s State, until int64) {
	in := &t.insts[h]
	in.state, in.until = s, until
	in.timerGen++
	t.timers.push(timer{at: until, h: h, gen: in.timerGen})
	t.unplace(h)
}

// advance ends parks and floor waits that are over.
func (t *Table) advance(ns int64) {
	for len(t.timers) > 0 && t.timers[0].at <= ns {
		tm := t.timers.pop()
		in := &t.insts[tm.h]
		if !in.live || in.timerGen != tm.gen {
			continue
		}
		switch in.state {
		case Parked:
			in.state = HalfOpen
		case BelowFloor:
			in.state, in.samples, in.rate = Closed, 0, 0 // measure afresh
			if in.claimsBelow(t.cfg.FloorTokPerSec) {
				// Its own latest claim is still under the floor (settlement's
				// probes keep it current): no call to find out again.
				in.timerGen++
				in.state, in.until = BelowFloor, tm.at+int64(t.cfg.FloorRetry)
				t.timers.push(timer{at: in.until, h: tm.h, gen: in.timerGen})
				continue
			}
		}
		t.place(tm.h)
	}
}

// spare is the instance's spare capacity in [.., 1].
func (in *instance) spare() float64 {
	return spareOf(in.capacity, in.gossip+in.local)
}

// headroom is its spare declared capacity in [.., 1].
func (in *instance) headroom() float64 {
	return spareOf(in.declared, in.gossip+in.local)
}

func spareOf(capacity float64, inFlight int) float64 {
	if capacity <= 0 {
		return 0
	}
	return 1 - float64(inFlight)/capacity
}

// place puts h in the bucket its state and spare capacity call for.
func (t *Table) place(h Handle) {
	in := &t.insts[h]
	want, set := int32(-1), uint8(preferred)
	if in.live && !in.away && (in.state == Closed || in.state == HalfOpen) {
		if s := in.spare(); s > 0 {
			want = t.level(s)
		} else if s := in.headroom(); s > 0 {
			want, set = t.level(s), spill
		}
	}
	if want == in.level && set == in.set {
		if want >= 0 && in.placedW != in.weight { // same bucket, new weight
			s := &t.sets[set]
			s.sums[want] += int64(in.weight - in.placedW)
			in.placedW = in.weight
			s.maxW[want] = max(s.maxW[want], in.weight)
		}
		return
	}
	t.unplace(h)
	if want < 0 {
		return
	}
	s := &t.sets[set]
	b := s.buckets[want]
	in.level, in.set, in.pos = want, set, int32(len(b))
	s.buckets[want] = append(b, h)
	s.sums[want] += int64(in.weight)
	in.placedW = in.weight
	s.maxW[want] = max(s.maxW[want], in.weight)
	s.occupied[want/64] |= 1 << (want % 64)
}

func (t *Table) level(spare float64) int32 {
	return int32(min(int(spare*float64(t.cfg.Levels)), t.cfg.Levels))
}

// unplace takes h out of its bucket.
func (t *Table) unplace(h Handle) {
	in := &t.insts[h]
	l := in.level
	if l < 0 {
		return
	}
	s := &t.sets[in.set]
	b := s.buckets[l]
	last := b[len(b)-1]
	b[in.pos] = last
	t.insts[last].pos = in.pos
	b = b[:len(b)-1]
	s.buckets[l] = b
	s.sums[l] -= int64(in.placedW)
	if len(b) == 0 {
		s.occupied[l/64] &^= 1 << (l % 64)
		s.maxW[l] = 0
	}
	in.level = -1
}
