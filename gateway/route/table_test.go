package route

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func newTable(t testing.TB, seed uint64) *Table {
	t.Helper()
	tb, err := NewTable(DefaultConfig(), rand.New(rand.NewPCG(seed, seed+1)))
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// idle adds n idle instances of capacity c.
func idle(tb *Table, n int, c float64) []Handle {
	hs := make([]Handle, n)
	for i := range hs {
		hs[i] = tb.Add(fmt.Sprintf("node-%d", i))
		tb.SetLoad(hs[i], Load{Capacity: c, InFlight: 0, TokPerSec: 0}, t0)
	}
	return hs
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []func(*Config){
		func(c *Config) { c.TieBand = -1 },
		func(c *Config) { c.Levels = 0 },
		func(c *Config) { c.FloorSamples = 0 },
		func(c *Config) { c.FailuresToPark = 0 },
		func(c *Config) { c.FailuresToPark = 99 },
		func(c *Config) { c.ParkFor = 0 },
		func(c *Config) { c.RateAlpha = 0 },
	}
	for i, mut := range bad {
		c := DefaultConfig()
		mut(&c)
		if c.Validate() == nil {
			t.Errorf("case %d: want an error", i)
		}
	}
	if _, err := NewTable(DefaultConfig(), nil); err == nil {
		t.Fatal("nil random source accepted")
	}
}

func TestLeastLoaded(t *testing.T) {
	cases := []struct {
		name  string
		loads [][2]float64 // capacity, in-flight
		want  int          // index, -1 = None
	}{
		{"empty", nil, -1},
		{"all full", [][2]float64{{2, 2}, {1, 1}}, -1},
		{"no capacity", [][2]float64{{0, 0}}, -1},
		{"idle beats busy", [][2]float64{{4, 2}, {4, 0}}, 1},
		{"relative, not absolute", [][2]float64{{100, 10}, {4, 1}}, 0},
		{"negative counters clamp to zero", [][2]float64{{4, -5}, {4, 1}}, 0},
		{"outside the band loses", [][2]float64{{10, 1}, {10, 0}}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tb := newTable(t, 1)
			var hs []Handle
			for i, l := range tc.loads {
				h := tb.Add(fmt.Sprint(i))
				tb.SetLoad(h, Load{Capacity: l[0], InFlight: int(l[1]), TokPerSec: 0}, t0)
				hs = append(hs, h)
			}
			for range 50 {
				h := tb.Pick(t0, nil)
				if tc.want < 0 {
					if h != None {
						t.Fatalf("picked %d, want none", h)
					}
					return
				}
				if h != hs[tc.want] {
					t.Fatalf("picked %d, want %d", h, hs[tc.want])
				}
				tb.Release(h, Success, t0)
			}
		})
	}
}

// The gateway's own in-flight calls count, so a burst does not pile onto
// the instance that looked idle a second ago.
func TestOwnInFlightSpreadsABurst(t *testing.T) {
	tb := newTable(t, 2)
	hs := idle(tb, 3, 4)
	got := map[Handle]int{}
	for range 12 {
		h := tb.Pick(t0, nil)
		if h == None {
			t.Fatal("no pick with spare capacity left")
		}
		got[h]++
	}
	for _, h := range hs {
		if got[h] != 4 {
			t.Fatalf("burst of 12 over 3 x capacity 4: %v", got)
		}
	}
	if tb.Pick(t0, nil) != None {
		t.Fatal("picked beyond capacity")
	}
}

// Ties never go to the first listed instance (LiteLLM's 93.7% bug): every
// order of insertion gives every instance its share.
func TestTiesShareEvenlyWhateverTheOrder(t *testing.T) {
	for seed := range uint64(3) {
		tb := newTable(t, seed)
		hs := idle(tb, 4, 8)
		counts := map[Handle]int{}
		const n = 40000
		for range n {
			h := tb.Pick(t0, nil)
			counts[h]++
			tb.Release(h, Success, t0)
		}
		for _, h := range hs {
			if share := float64(counts[h]) / n; share < 0.235 || share > 0.265 {
				t.Fatalf("seed %d: instance %d got %.3f of ties, want 0.25: %v", seed, h, share, counts)
			}
		}
	}
}

func TestHealthWeightsTies(t *testing.T) {
	tb := newTable(t, 3)
	hs := idle(tb, 2, 8)
	tb.SetHealth(hs[0], 0.25)
	tb.SetHealth(hs[1], 0.75)
	var second int
	const n = 40000
	for range n {
		h := tb.Pick(t0, nil)
		if h == hs[1] {
			second++
		}
		tb.Release(h, Success, t0)
	}
	if share := float64(second) / n; share < 0.73 || share > 0.77 {
		t.Fatalf("weight-0.75 instance got %.3f, want 0.75", share)
	}
}

func TestExcludeNeverRepeats(t *testing.T) {
	tb := newTable(t, 4)
	hs := idle(tb, 3, 8)
	for range 200 {
		a := tb.Pick(t0, nil)
		b := tb.Pick(t0, []Handle{a})
		c := tb.Pick(t0, []Handle{a, b})
		d := tb.Pick(t0, []Handle{a, b, c})
		if a == b || b == c || a == c || d != None {
			t.Fatalf("picks %d %d %d %d", a, b, c, d)
		}
		for _, h := range []Handle{a, b, c} {
			tb.Release(h, Neutral, t0)
		}
	}
	_ = hs
}

func TestFloor(t *testing.T) {
	cfg := DefaultConfig()
	t.Run("measured under the floor is not a candidate until retry", func(t *testing.T) {
		tb := newTable(t, 5)
		hs := idle(tb, 2, 8)
		slow := hs[0]
		for range cfg.FloorSamples {
			tb.ObserveRate(slow, 5, 2*time.Second, t0) // 2 tok/s
		}
		for range 100 {
			h := tb.Pick(t0.Add(time.Second), nil)
			if h == slow {
				t.Fatal("picked an instance under the floor")
			}
			tb.Release(h, Success, t0)
		}
		if i, _ := tb.Info(slow, t0); i.State != "below-floor" || i.Candidate {
			t.Fatalf("info %+v", i)
		}
		// After FloorRetry it is measured afresh.
		later := t0.Add(cfg.FloorRetry + time.Second)
		seen := false
		for range 100 {
			h := tb.Pick(later, nil)
			seen = seen || h == slow
			tb.Release(h, Success, later)
		}
		if !seen {
			t.Fatal("an instance under the floor never got a fresh chance")
		}
	})
	t.Run("6 and 200 tok/s are equal candidates", func(t *testing.T) {
		tb := newTable(t, 6)
		hs := idle(tb, 2, 8)
		for range 5 {
			tb.ObserveRate(hs[0], 61, 10*time.Second, t0) // 6 tok/s
			tb.ObserveRate(hs[1], 201, time.Second, t0)   // 200 tok/s
		}
		counts := map[Handle]int{}
		for range 20000 {
			h := tb.Pick(t0, nil)
			counts[h]++
			tb.Release(h, Success, t0)
		}
		if share := float64(counts[hs[0]]) / 20000; share < 0.47 || share > 0.53 {
			t.Fatalf("6 tok/s got %.3f of traffic, want 0.5", share)
		}
	})
	t.Run("one slow stream is a hiccup", func(t *testing.T) {
		tb := newTable(t, 7)
		hs := idle(tb, 1, 8)
		tb.ObserveRate(hs[0], 3, 2*time.Second, t0)
		if tb.Pick(t0, nil) != hs[0] {
			t.Fatal("parked by the floor after a single slow stream")
		}
	})
	t.Run("a node's own claim under the floor counts until measured", func(t *testing.T) {
		tb := newTable(t, 8)
		h := tb.Add("claims-slow")
		tb.SetLoad(h, Load{Capacity: 8, InFlight: 0, TokPerSec: 2}, t0)
		if tb.Pick(t0, nil) != None {
			t.Fatal("picked a node that says it is under the floor")
		}
	})
	t.Run("unknown rate is a candidate", func(t *testing.T) {
		tb := newTable(t, 9)
		hs := idle(tb, 1, 8)
		if tb.Pick(t0, nil) != hs[0] {
			t.Fatal("a node not yet measured was refused")
		}
	})
}

func TestBreaker(t *testing.T) {
	cfg := DefaultConfig()
	pickOnly := func(tb *Table, now time.Time) Handle { return tb.Pick(now, nil) }

	t.Run("3 failures within 60s park for 15s, then one probe readmits", func(t *testing.T) {
		tb := newTable(t, 10)
		h := idle(tb, 1, 8)[0]
		now := t0
		for i := range 3 {
			if got := pickOnly(tb, now); got != h {
				t.Fatalf("failure %d: not picked", i)
			}
			tb.Release(h, Failure, now)
			now = now.Add(10 * time.Second)
		}
		if i, _ := tb.Info(h, now); i.Breaker != "open" {
			t.Fatalf("after 3 failures: %+v", i)
		}
		parkedAt := now.Add(-10 * time.Second)
		if pickOnly(tb, parkedAt.Add(cfg.ParkFor-time.Millisecond)) != None {
			t.Fatal("a parked instance was picked")
		}
		probeAt := parkedAt.Add(cfg.ParkFor)
		if pickOnly(tb, probeAt) != h {
			t.Fatal("no probe once the park was over")
		}
		if pickOnly(tb, probeAt) != None {
			t.Fatal("a second call went through while the probe was in flight")
		}
		tb.Release(h, Success, probeAt)
		for range 5 {
			if pickOnly(tb, probeAt) != h {
				t.Fatal("not readmitted fully after a good probe")
			}
		}
	})
	t.Run("a failed probe parks again", func(t *testing.T) {
		tb := newTable(t, 11)
		h := idle(tb, 1, 8)[0]
		for range 3 {
			tb.Pick(t0, nil)
			tb.Release(h, Failure, t0)
		}
		probeAt := t0.Add(cfg.ParkFor)
		tb.Pick(probeAt, nil)
		tb.Release(h, Failure, probeAt)
		if pickOnly(tb, probeAt.Add(cfg.ParkFor-time.Millisecond)) != None {
			t.Fatal("picked after a failed probe")
		}
		if pickOnly(tb, probeAt.Add(cfg.ParkFor)) != h {
			t.Fatal("no second probe")
		}
	})
	t.Run("failures spread wider than the window do not park", func(t *testing.T) {
		tb := newTable(t, 12)
		h := idle(tb, 1, 8)[0]
		now := t0
		for range 10 {
			tb.Pick(now, nil)
			tb.Release(h, Failure, now)
			now = now.Add(31 * time.Second)
		}
		if i, _ := tb.Info(h, now); i.Breaker != "closed" {
			t.Fatalf("parked by failures 31 s apart: %+v", i)
		}
	})
	t.Run("neutral and full never park", func(t *testing.T) {
		tb := newTable(t, 13)
		h := idle(tb, 1, 8)[0]
		for range 100 {
			tb.Pick(t0, nil)
			tb.Release(h, Neutral, t0)
		}
		tb.Pick(t0, nil)
		tb.Release(h, Full, t0)
		if i, _ := tb.Info(h, t0); i.Breaker != "closed" || i.Spare > 0 {
			t.Fatalf("after neutral and full: %+v", i)
		}
		// Full means no spare capacity until the next announcement.
		if pickOnly(tb, t0) != None {
			t.Fatal("picked a node that answered 429")
		}
		tb.SetLoad(h, Load{Capacity: 8, InFlight: 1, TokPerSec: 0}, t0)
		if pickOnly(tb, t0) != h {
			t.Fatal("not a candidate again after a fresh announcement")
		}
	})
	t.Run("a neutral probe lets the next call probe", func(t *testing.T) {
		tb := newTable(t, 14)
		h := idle(tb, 1, 8)[0]
		for range 3 {
			tb.Pick(t0, nil)
			tb.Release(h, Failure, t0)
		}
		at := t0.Add(cfg.ParkFor)
		tb.Pick(at, nil)
		tb.Release(h, Neutral, at)
		if pickOnly(tb, at) != h {
			t.Fatal("no probe after a neutral one")
		}
	})
}

func TestRemoveAndReuse(t *testing.T) {
	tb := newTable(t, 15)
	hs := idle(tb, 3, 8)
	tb.Remove(hs[1])
	tb.Release(hs[1], Failure, t0) // a call in flight ends after the node left: no-op
	for range 100 {
		h := tb.Pick(t0, nil)
		if h == hs[1] {
			t.Fatal("picked a removed instance")
		}
		tb.Release(h, Success, t0)
	}
	n := tb.Add("newcomer")
	tb.SetLoad(n, Load{Capacity: 8, InFlight: 0, TokPerSec: 0}, t0)
	if _, ok := tb.Lookup("node-1"); ok || tb.Len() != 3 {
		t.Fatalf("len %d", tb.Len())
	}
}

// Property: over random event sequences, (1) a neutral outcome never
// changes the breaker state, (2) a parked instance is never picked and an
// instance in half-open takes exactly one call at a time, (3) Pick only
// returns instances with spare declared capacity, and one without spare
// effective capacity only when no candidate has any, (4) bucket
// bookkeeping matches a brute-force recount.
func TestPropertiesOverRandomEvents(t *testing.T) {
	for seed := range uint64(30) {
		r := rand.New(rand.NewPCG(seed, 99))
		tb := newTable(t, seed)
		n := 2 + r.IntN(8)
		hs := idle(tb, n, float64(1+r.IntN(6)))
		inFlight := map[Handle]int{}
		now := t0
		for step := range 3000 {
			now = now.Add(time.Duration(r.IntN(3000)) * time.Millisecond)
			switch op := r.IntN(10); {
			case op < 4:
				before := snapshot(tb, now)
				h := tb.Pick(now, nil)
				if h == None {
					continue
				}
				b := before[h]
				if b.Breaker == "open" || b.State == "probing" || b.State == "below-floor" || !b.Candidate {
					t.Fatalf("seed %d step %d: picked %d in %+v", seed, step, h, b)
				}
				if b.Spare <= 0 {
					if b.Local+b.InFlight >= int(b.Declared) || !b.Spill {
						t.Fatalf("seed %d step %d: picked %d with no declared headroom: %+v", seed, step, h, b)
					}
					for o, i := range before {
						if i.Candidate && i.Spare > 0 {
							t.Fatalf("seed %d step %d: spilled onto %d while %d had spare %v", seed, step, h, o, i.Spare)
						}
					}
				}
				inFlight[h]++
			case op < 8:
				var h Handle = None
				for k, v := range inFlight {
					if v > 0 {
						h = k
						break
					}
				}
				if h == None {
					continue
				}
				o := Outcome(r.IntN(4))
				before, _ := tb.Info(h, now)
				tb.Release(h, o, now)
				inFlight[h]--
				after, _ := tb.Info(h, now)
				if o == Neutral && before.Breaker != after.Breaker {
					t.Fatalf("seed %d step %d: neutral moved the breaker %s -> %s", seed, step, before.Breaker, after.Breaker)
				}
			case op < 9:
				h := hs[r.IntN(len(hs))]
				c := float64(r.IntN(6))
				tb.SetLoad(h, Load{Capacity: c, Declared: c * float64(1+r.IntN(3)), InFlight: r.IntN(4)}, now)
			default:
				tb.SetHealth(hs[r.IntN(len(hs))], r.Float64())
			}
			checkBuckets(t, tb)
		}
	}
}

func snapshot(tb *Table, now time.Time) map[Handle]Info {
	m := map[Handle]Info{}
	for _, h := range tb.Handles() {
		m[h], _ = tb.Info(h, now)
	}
	return m
}

func checkBuckets(t *testing.T, tb *Table) {
	t.Helper()
	for si := range tb.sets {
		set := &tb.sets[si]
		for l, b := range set.buckets {
			var sum int64
			for i, h := range b {
				in := &tb.insts[h]
				if int(in.level) != l || int(in.pos) != i || int(in.set) != si {
					t.Fatalf("instance %d at set %d bucket %d/%d thinks %d %d/%d", h, si, l, i, in.set, in.level, in.pos)
				}
				sum += int64(in.placedW)
				if in.placedW > set.maxW[l] {
					t.Fatalf("bucket %d max weight %d below member weight %d", l, set.maxW[l], in.placedW)
				}
			}
			if sum != set.sums[l] {
				t.Fatalf("bucket %d sum %d, recount %d", l, set.sums[l], sum)
			}
			if occ := set.occupied[l/64]&(1<<(l%64)) != 0; occ != (len(b) > 0) {
				t.Fatalf("bucket %d occupancy bit %v with %d members", l, occ, len(b))
			}
		}
	}
}

// A gateway that holds most calls in flight itself routes least-loaded; one
// of many on the same gossip takes the better of two random candidates, so
// a herd of gateways does not pile onto the idlest instance.
func TestHerdModeSpreadsWhenOthersHoldTheCalls(t *testing.T) {
	// n instances: one idle, the others with busy calls of other gateways
	// in flight; then 10 picks, each released at once.
	spreadOver := func(n, busy, local int) (instances int, idlePicked bool) {
		tb := newTable(t, 31)
		var hs []Handle
		for i := range n {
			h := tb.Add(fmt.Sprint(i))
			b := busy
			if i == 0 {
				b = 0
			}
			tb.SetLoad(h, Load{Capacity: 64, Declared: 64, InFlight: b}, t0)
			hs = append(hs, h)
		}
		for i := range local { // this gateway's own calls, on the busy ones
			tb.insts[hs[1+i%(n-1)]].local++
			tb.localSum++
		}
		for _, h := range hs {
			tb.place(h)
		}
		got := map[Handle]bool{}
		for range 10 {
			h := tb.Pick(t0, nil)
			got[h] = true
			tb.Release(h, Success, t0)
		}
		return len(got), got[hs[0]]
	}
	if k, idle := spreadOver(20, 4, 0); k < 4 || !idle {
		t.Errorf("one of many: 10 picks went to %d instances (idle one picked: %v); want them spread, the idle one among them", k, idle)
	}
	if k, idle := spreadOver(20, 4, 400); k != 1 || !idle {
		t.Errorf("holding most calls itself: 10 picks went to %d instances; want only the idle one", k)
	}
	if k, idle := spreadOver(2, 7, 0); k != 1 || !idle {
		t.Errorf("too few calls for a herd: 10 picks went to %d instances; want only the idle one", k)
	}
}

// Ramp-up shapes who is preferred, never whether a call is served: a
// ramping instance's declared headroom is used once every candidate is at
// its ramped capacity, and only then.
func TestRampUpNeverRefusesWithFreeCapacity(t *testing.T) {
	tb := newTable(t, 21)
	veteran := tb.Add("veteran")
	tb.SetLoad(veteran, Load{Capacity: 4, Declared: 4}, t0)
	fresh := tb.Add("newcomer")
	tb.SetLoad(fresh, Load{Capacity: 1, Declared: 10}, t0) // 10% of 10 declared
	got := map[Handle]int{}
	for range 14 {
		h := tb.Pick(t0, nil)
		if h == None {
			t.Fatalf("refused with %v in flight of 14 declared: %v", got, tb.Candidates(t0))
		}
		got[h]++
	}
	if got[veteran] != 4 || got[fresh] != 10 {
		t.Fatalf("14 concurrent calls went %d to the veteran and %d to the newcomer; want 4 and 10", got[veteran], got[fresh])
	}
	if h := tb.Pick(t0, nil); h != None {
		t.Fatalf("picked %d beyond every declared capacity", h)
	}
	// Once the veteran frees a slot it is preferred again over spill.
	tb.Release(veteran, Success, t0)
	if h := tb.Pick(t0, nil); h != veteran {
		t.Fatalf("with the veteran free, picked %d", h)
	}
	// The newcomer's first (ramped) call is preferred like anyone's.
	tb2 := newTable(t, 22)
	a := tb2.Add("a")
	tb2.SetLoad(a, Load{Capacity: 1, Declared: 10}, t0)
	if i, _ := tb2.Info(a, t0); i.Spill || !i.Candidate {
		t.Fatalf("an idle newcomer is %+v, want a preferred candidate", i)
	}
	if tb2.Pick(t0, nil) != a {
		t.Fatal("an idle newcomer was not picked")
	}
	if i, _ := tb2.Info(a, t0); !i.Spill || !i.Candidate {
		t.Fatalf("a newcomer at its ramped capacity is %+v, want a spill candidate", i)
	}
	// A node's 429 means its declared capacity is in use.
	tb2.Release(a, Full, t0)
	if i, _ := tb2.Info(a, t0); i.Candidate {
		t.Fatalf("after its 429 the newcomer is still a candidate: %+v", i)
	}
}

// A node that says itself it is under the floor stays out when its floor
// wait ends, without a consumer's call to find out again.
func TestFloorWaitEndsOnlyWhenTheClaimRises(t *testing.T) {
	tb := newTable(t, 23)
	h := tb.Add("slow")
	tb.SetLoad(h, Load{Capacity: 8, Declared: 8, TokPerSec: 3}, t0)
	later := t0.Add(3 * DefaultConfig().FloorRetry)
	if got := tb.Pick(later, nil); got != None {
		t.Fatal("a node still claiming 3 tok/s was picked after its floor wait")
	}
	tb.SetLoad(h, Load{Capacity: 8, Declared: 8, TokPerSec: 30}, later)
	if got := tb.Pick(later.Add(DefaultConfig().FloorRetry), nil); got != h {
		t.Fatal("a node whose claim rose above the floor was not readmitted after its wait")
	}
}

// BenchmarkPick: one pick and its release over 10,000 idle candidates
// (the worst case for the tie band: every instance ties).
func BenchmarkPick(b *testing.B) {
	for _, n := range []int{10, 10_000} {
		b.Run(fmt.Sprintf("candidates=%d", n), func(b *testing.B) {
			tb := newTable(b, 1)
			idle(tb, n, 8)
			b.ReportAllocs()
			for b.Loop() {
				h := tb.Pick(t0, nil)
				tb.Release(h, Success, t0)
			}
		})
	}
}

// BenchmarkPickLinearBaseline is the obvious O(n) scan over the same
// candidates, measured in the same run as the yardstick for BenchmarkPick.
func BenchmarkPickLinearBaseline(b *testing.B) {
	type cand struct{ capacity, busy float64 }
	cands := make([]cand, 10_000)
	for i := range cands {
		cands[i] = cand{8, 0}
	}
	r := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	for b.Loop() {
		best, n := -1.0, 0
		for i := range cands {
			s := 1 - cands[i].busy/cands[i].capacity
			if s > best+0.05 {
				best, n = s, 0
			}
			if s >= best-0.05 {
				n++
			}
		}
		_ = r.IntN(n)
	}
}
