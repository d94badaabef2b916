package route

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestRoutable(t *testing.T) {
	cfg := DefaultConfig()
	one := func(tb *Table, l Load) Handle {
		h := tb.Add("a")
		tb.SetLoad(h, l, t0)
		return h
	}
	cases := []struct {
		name string
		set  func(tb *Table) // builds the table at t0
		at   time.Duration   // asked this long after t0
		want bool
	}{
		{"empty", func(*Table) {}, 0, false},
		{"added, never announced", func(tb *Table) { tb.Add("a") }, 0, false},
		{"idle", func(tb *Table) { one(tb, Load{Capacity: 4}) }, 0, true},
		{"full: 503, not unknown", func(tb *Table) { one(tb, Load{Capacity: 2, InFlight: 2}) }, 0, true},
		{"ramping, only declared headroom", func(tb *Table) { one(tb, Load{Capacity: 0.4, Declared: 4, InFlight: 1}) }, 0, true},
		{"ramped to nothing, declared room", func(tb *Table) { one(tb, Load{Capacity: 0, Declared: 4}) }, 0, true},
		{"away: 503, not unknown", func(tb *Table) {
			h := one(tb, Load{Capacity: 4, TokPerSec: 30})
			tb.SetLoad(h, Load{Declared: 4, Away: true, TokPerSec: 30}, t0) // what View.Unreachable does
		}, 0, true},
		{"no declared capacity", func(tb *Table) { one(tb, Load{TokPerSec: 30}) }, 0, false},
		{"away and under the floor", func(tb *Table) { one(tb, Load{Declared: 4, Away: true, TokPerSec: 2}) }, 0, false},
		{"its claim under the floor", func(tb *Table) { one(tb, Load{Capacity: 4, TokPerSec: 2}) }, 0, false},
		{"measured under the floor", func(tb *Table) {
			h := one(tb, Load{Capacity: 4})
			for range cfg.FloorSamples {
				tb.ObserveRate(h, 5, 2*time.Second, t0)
			}
		}, 0, false},
		{"measured under the floor, retry due", func(tb *Table) {
			h := one(tb, Load{Capacity: 4})
			for range cfg.FloorSamples {
				tb.ObserveRate(h, 5, 2*time.Second, t0)
			}
		}, cfg.FloorRetry, true},
		{"parked: 503, not unknown", func(tb *Table) {
			h := one(tb, Load{Capacity: 8})
			for range cfg.FailuresToPark {
				tb.Pick(t0, nil)
				tb.Release(h, Failure, t0)
			}
		}, 0, true},
		{"probing: 503, not unknown", func(tb *Table) {
			h := one(tb, Load{Capacity: 8})
			for range cfg.FailuresToPark {
				tb.Pick(t0, nil)
				tb.Release(h, Failure, t0)
			}
			tb.Pick(t0.Add(cfg.ParkFor), nil) // the probe, still in flight
		}, cfg.ParkFor, true},
		{"removed", func(tb *Table) { tb.Remove(one(tb, Load{Capacity: 4})) }, 0, false},
		{"one slow, one full", func(tb *Table) {
			one(tb, Load{Capacity: 4, TokPerSec: 2})
			tb.SetLoad(tb.Add("b"), Load{Capacity: 1, InFlight: 1}, t0)
		}, 0, true},
		{"one slow, one away", func(tb *Table) {
			one(tb, Load{Capacity: 4, TokPerSec: 2})
			tb.SetLoad(tb.Add("b"), Load{Declared: 2, Away: true}, t0)
		}, 0, true},
		{"one slow, one with no capacity", func(tb *Table) {
			one(tb, Load{Capacity: 4, TokPerSec: 2})
			tb.SetLoad(tb.Add("b"), Load{}, t0)
		}, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tb := newTable(t, 31)
			tc.set(tb)
			now := t0.Add(tc.at)
			if got := tb.Routable(now); got != tc.want {
				t.Fatalf("Routable = %v, want %v; instances %+v", got, tc.want, snapshot(tb, now))
			}
			if got := anyRoutable(tb, now); got != tc.want {
				t.Fatalf("Info says routable = %v, want %v", got, tc.want)
			}
		})
	}
}

func anyRoutable(tb *Table, now time.Time) bool {
	for _, i := range snapshot(tb, now) {
		if i.Routable {
			return true
		}
	}
	return false
}

// Over random events, Routable and Pick agree: whenever Pick finds an
// instance, Routable said so just before and it was not away; whenever
// Routable is false, no instance is routable; and when Routable holds but
// Pick finds none, every routable instance is merely full, parked or away.
func TestRoutableAgreesWithPick(t *testing.T) {
	for seed := range uint64(30) {
		r := rand.New(rand.NewPCG(seed, 7))
		tb := newTable(t, seed)
		hs := idle(tb, 1+r.IntN(5), float64(1+r.IntN(4)))
		var inFlight []Handle
		now := t0
		for step := range 3000 {
			now = now.Add(time.Duration(r.IntN(4000)) * time.Millisecond)
			routable := tb.Routable(now)
			if routable != anyRoutable(tb, now) {
				t.Fatalf("seed %d step %d: Routable %v disagrees with Info %+v", seed, step, routable, snapshot(tb, now))
			}
			switch op := r.IntN(10); {
			case op < 4:
				before := snapshot(tb, now)
				h := tb.Pick(now, nil)
				if h != None {
					if !routable || before[h].Away {
						t.Fatalf("seed %d step %d: picked %d of a table routable %v: %+v", seed, step, h, routable, before)
					}
					inFlight = append(inFlight, h)
					continue
				}
				for _, i := range before {
					full := i.Local+i.InFlight >= int(i.Declared)
					if i.Routable && !full && !i.Away && i.Breaker == "closed" {
						t.Fatalf("seed %d step %d: no pick, yet %+v is routable with room, closed and reachable", seed, step, i)
					}
				}
			case op < 7 && len(inFlight) > 0:
				k := r.IntN(len(inFlight))
				tb.Release(inFlight[k], Outcome(r.IntN(4)), now)
				inFlight = append(inFlight[:k], inFlight[k+1:]...)
			case op < 8:
				h := hs[r.IntN(len(hs))]
				c := float64(r.IntN(5))
				tb.SetLoad(h, Load{Capacity: c, Declared: c * float64(1+r.IntN(3)), InFlight: r.IntN(4),
					TokPerSec: float64(r.IntN(3) * 4), Away: r.IntN(4) == 0}, now)
			case op < 9:
				tb.ObserveRate(hs[r.IntN(len(hs))], int64(2+r.IntN(20)), time.Second, now)
			default:
				h := hs[r.IntN(len(hs))]
				if r.IntN(4) == 0 {
					tb.Remove(h)
					tb.SetLoad(tb.Add(tb.insts[h].id), Load{Capacity: 2, Declared: 2}, now)
				}
			}
		}
	}
}
