package nodecore

import (
	"testing"
	"time"
)

func TestGossipBudgetInterval(t *testing.T) {
	b := DefaultGossipBudget()
	if err := b.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		announcers int
		want       time.Duration
	}{
		{0, time.Second}, // alone: the floor
		{6, time.Second}, // small networks announce as often as the SPEC allows: 6 × 6,500 B = 39 KB/s
		{10, 1625 * time.Millisecond},
		{100, 16250 * time.Millisecond},
		{1_000, 162500 * time.Millisecond},
		{10_000, 1625 * time.Second},
		{100_000, 30 * time.Minute}, // the cap
	} {
		got := b.Interval(c.announcers)
		if got != c.want {
			t.Errorf("Interval(%d) = %s, want %s", c.announcers, got, c.want)
		}
		// Below the cap, the whole network costs a gateway at most the budget.
		if got < b.Max {
			if cost := b.BytesPerGateway(c.announcers, got); cost > b.BytesPerSec+1 {
				t.Errorf("%d announcers every %s cost %.0f B/s, over the %.0f B/s budget", c.announcers, got, cost, b.BytesPerSec)
			}
		}
	}
	for _, bad := range []GossipBudget{{}, {BytesPerSec: 1, CostEach: 1, Min: time.Second, Max: time.Millisecond}} {
		if bad.Validate() == nil {
			t.Errorf("%+v: want an error", bad)
		}
	}
}
