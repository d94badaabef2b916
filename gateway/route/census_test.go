package route

import (
	"testing"
	"time"
)

// A census names the hindrance that left Pick without a candidate, and
// counts breaker states as an operator reads them.
func TestCensusNoPick(t *testing.T) {
	type setup func(tb *Table) []Handle // returns the handles to exclude
	park := func(tb *Table, h Handle) {
		for range DefaultConfig().FailuresToPark {
			tb.Pick(t0, nil)
			tb.Release(h, Failure, t0)
		}
	}
	cases := []struct {
		name  string
		setup setup
		want  string
	}{
		{"empty", func(*Table) []Handle { return nil }, NoPickNoInstance},
		{"all tried", func(tb *Table) []Handle { return idle(tb, 2, 4) }, NoPickAllTried},
		{"full", func(tb *Table) []Handle {
			h := tb.Add("a")
			tb.SetLoad(h, Load{Capacity: 2, InFlight: 2}, t0)
			return nil
		}, NoPickFull},
		{"parked", func(tb *Table) []Handle {
			park(tb, idle(tb, 1, 4)[0])
			return nil
		}, NoPickBreaker},
		{"away", func(tb *Table) []Handle {
			h := tb.Add("a")
			tb.SetLoad(h, Load{Capacity: 4, Away: true}, t0)
			return nil
		}, NoPickAway},
		{"below floor", func(tb *Table) []Handle {
			h := tb.Add("a")
			tb.SetLoad(h, Load{Capacity: 4, TokPerSec: 1}, t0)
			return nil
		}, NoPickBelowFloor},
		{"no capacity declared", func(tb *Table) []Handle {
			tb.SetLoad(tb.Add("a"), Load{}, t0)
			return nil
		}, NoPickNoCapacity},
		{"the commonest hindrance wins", func(tb *Table) []Handle {
			hs := idle(tb, 3, 4)
			park(tb, hs[0])
			for _, h := range hs[1:] {
				tb.SetLoad(h, Load{Capacity: 4, Away: true}, t0)
			}
			return nil
		}, NoPickAway},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tb := newTable(t, 1)
			exclude := tc.setup(tb)
			if h := tb.Pick(t0, exclude); h != None {
				t.Fatalf("Pick found %d; the case wants none", h)
			}
			if got := tb.Census(t0).NoPick(); got != tc.want {
				t.Fatalf("NoPick = %q, want %q (census %+v)", got, tc.want, tb.Census(t0))
			}
		})
	}
}

func TestCensusBreakers(t *testing.T) {
	tb := newTable(t, 1)
	hs := idle(tb, 4, 4)
	for range DefaultConfig().FailuresToPark {
		tb.Release(hs[0], Failure, t0)
	}
	tb.SetLoad(hs[1], Load{Capacity: 4, TokPerSec: 1}, t0) // below the floor: its breaker is closed
	var all Census
	all.Add(tb.Census(t0))
	closed, open, half := all.Breakers()
	if all.Instances != 4 || closed != 3 || open != 1 || half != 0 || all.Candidates != 2 {
		t.Fatalf("census %+v: closed %d open %d half-open %d", all, closed, open, half)
	}
	// The park ends: half-open until its probe readmits it.
	later := t0.Add(DefaultConfig().ParkFor + time.Second)
	if _, open, half := tb.Census(later).Breakers(); open != 0 || half != 1 {
		t.Fatalf("after the park: open %d half-open %d", open, half)
	}
	tb.Remove(hs[3])
	if c := tb.Census(later); c.Instances != 3 {
		t.Fatalf("removed instance still counted: %+v", c)
	}
}
