package gateway

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// The breaker gauges are read from the routing tables at scrape time, and
// a call that finds no instance is told why.
func TestViewMetrics(t *testing.T) {
	_, a := testkit.RandomPeer(t)
	_, b := testkit.RandomPeer(t)
	now := time.Unix(1_700_000_000, 0)
	v := NewView("gw", route.DefaultConfig(), func() time.Time { return now }, 10*time.Second, 1)
	for _, id := range []peer.ID{a, b} {
		v.Update(id, &p2p.Announcement{Node: id.String(), Models: []p2p.ModelLoad{{Model: "m", Capacity: 4}}, TokPerSec: 50})
	}
	c := &viewCollector{v: v}
	breakers := func(closed, open, half float64) {
		t.Helper()
		g := gauges(t, c)
		if g[`breaker_instances{state="closed"}`] != closed || g[`breaker_instances{state="open"}`] != open || g[`breaker_instances{state="half-open"}`] != half {
			t.Fatalf("breakers %v, want closed %v open %v half-open %v", g, closed, open, half)
		}
	}
	breakers(2, 0, 0)
	if got := v.NoPick("unknown"); got != route.NoPickNoInstance {
		t.Fatalf("NoPick of a model nobody serves = %q", got)
	}
	if _, _, ok := v.Acquire("m", []peer.ID{a, b}); ok {
		t.Fatal("Acquire picked an instance already tried")
	}
	if got := v.NoPick("m"); got != route.NoPickAllTried {
		t.Fatalf("NoPick with both tried = %q", got)
	}
	// Three failures park each node: the breaker opens, and a call finds no one.
	for _, id := range []peer.ID{a, b} {
		for range route.DefaultConfig().FailuresToPark {
			got, l, ok := v.Acquire("m", nil)
			if !ok {
				t.Fatal("no instance to fail on")
			}
			if got != id { // the other one: release it untouched and pick again
				l.Done(route.Neutral, 0, 0)
				if got, l, ok = v.Acquire("m", []peer.ID{got}); !ok || got != id {
					t.Fatalf("could not pick %s", id)
				}
			}
			l.Done(route.Failure, 0, 0)
		}
	}
	breakers(0, 2, 0)
	if _, _, ok := v.Acquire("m", nil); ok {
		t.Fatal("a parked instance was picked")
	}
	if got := v.NoPick("m"); got != route.NoPickBreaker {
		t.Fatalf("NoPick with every instance parked = %q", got)
	}
	now = now.Add(route.DefaultConfig().ParkFor + time.Second)
	breakers(0, 0, 2)
	if g := gauges(t, c); g["candidates"] != 2 || g[`instances{state="half-open"}`] != 2 {
		t.Fatalf("after the parks each takes its probe: %v", g)
	}
}

// gauges collects c into a registry of its own and returns its values by
// name (without tokenrouter_gateway_) and labels.
func gauges(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			key := strings.TrimPrefix(f.GetName(), "tokenrouter_gateway_")
			for _, l := range m.GetLabel() {
				key += fmt.Sprintf("{%s=%q}", l.GetName(), l.GetValue())
			}
			out[key] = m.GetGauge().GetValue()
		}
	}
	return out
}

func TestChosenReason(t *testing.T) {
	for _, tc := range []struct {
		last *attemptError
		want string
	}{
		{nil, "least_loaded"},
		{&attemptError{status: 502}, "after_failure"},
		{&attemptError{status: 429, full: true}, "after_full"},
	} {
		if got := chosenReason(tc.last); got != tc.want {
			t.Errorf("chosenReason(%+v) = %q, want %q", tc.last, got, tc.want)
		}
	}
}
