package gateway

import (
	"slices"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// What GET /v1/models lists (Listed) and what a call is routed to
// (HasModel, then Acquire) agree at every step of a node's life: listed
// while it serves, or is merely full or away (its connection closed: no
// candidate, 503 for the moment, and a health report re-applying its last
// announcement does not make it one again); back with its next
// announcement; out while it says it is under the floor, and once it is
// gone. A model's other instances keep it listed with only them.
func TestListedAgreesWithHasModel(t *testing.T) {
	_, a := testkit.RandomPeer(t)
	_, b := testkit.RandomPeer(t)
	now := time.Unix(1_700_000_000, 0)
	v := NewView("gw", route.DefaultConfig(), func() time.Time { return now }, 10*time.Second, 1)
	seq := uint64(0)
	announce := func(id string, inFlight int, tokS float64) *p2p.Announcement {
		seq++
		return &p2p.Announcement{Node: id, Seq: seq, TokPerSec: tokS,
			Models: []p2p.ModelLoad{{Model: "m", Capacity: 4, InFlight: inFlight}}}
	}
	report := func() *p2p.HealthReport {
		return &p2p.HealthReport{Scores: []p2p.InstanceScore{
			{Node: a.String(), Model: "m", Score: 0.9, Ramp: 1},
			{Node: b.String(), Model: "m", Score: 0.9, Ramp: 1},
		}}
	}
	// want: the instances listed for "m" (nil: "m" not listed), and
	// whether Acquire finds one.
	check := func(step string, want []string, routed bool) {
		t.Helper()
		var listed []string
		for _, m := range v.Listed() {
			if m.ID != "m" {
				t.Fatalf("%s: lists %q", step, m.ID)
			}
			for _, in := range m.Instances {
				listed = append(listed, in.Node)
			}
		}
		if !slices.Equal(listed, want) {
			t.Fatalf("%s: lists %v, want %v", step, listed, want)
		}
		if has := v.HasModel("m"); has != (len(want) > 0) {
			t.Fatalf("%s: HasModel %v while Listed shows %v", step, has, listed)
		}
		id, l, ok := v.Acquire("m", nil)
		if ok {
			l.Done(route.Neutral, 0, 0)
		}
		if ok != routed || ok && len(want) == 0 {
			t.Fatalf("%s: Acquire found %q (%v), want %v", step, id, ok, routed)
		}
	}
	check("empty", nil, false)
	v.Update(a, announce(a.String(), 0, 40))
	check("announced", []string{a.String()}, true)
	v.Update(a, announce(a.String(), 4, 40))
	check("full: listed, 503", []string{a.String()}, false)
	v.Update(a, announce(a.String(), 0, 40))
	v.Unreachable(a)
	check("connection closed: listed, 503", []string{a.String()}, false)
	now = now.Add(time.Second)
	v.SetReport(report())
	check("a health report after it closed", []string{a.String()}, false)
	v.Update(a, announce(a.String(), 0, 40))
	check("announced again", []string{a.String()}, true)
	v.Update(a, announce(a.String(), 0, 2))
	check("says it is under the floor", nil, false)
	v.Update(b, announce(b.String(), 0, 40))
	check("another instance", []string{b.String()}, true)
	v.Unreachable(b)
	check("it is away", []string{b.String()}, false)
	now = now.Add(time.Minute)
	v.expire()
	check("both gone", nil, false)
}
