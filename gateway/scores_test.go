package gateway

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// A gateway tells settlement which instances it passed over and why, and
// charges each with the calls of its model since the last report: the
// operator's "why did my node lose calls".
func TestReportsPassedOver(t *testing.T) {
	_, full := testkit.RandomPeer(t)
	_, free := testkit.RandomPeer(t)
	_, flaky := testkit.RandomPeer(t)
	now := time.Unix(1_700_000_000, 0)
	v := NewView("gw", route.DefaultConfig(), func() time.Time { return now }, 10*time.Second, 1)
	ann := func(id string, inFlight int) *p2p.Announcement {
		return &p2p.Announcement{Node: id, Models: []p2p.ModelLoad{{Model: "m", Capacity: 4, InFlight: inFlight}}, TokPerSec: 50}
	}
	v.Update(full, ann(full.String(), 4))
	v.Update(free, ann(free.String(), 0))
	v.Update(flaky, ann(flaky.String(), 0))
	// Fail calls on flaky until its breaker parks it.
	for range 20 {
		if v.passedOver("m")[flaky.String()] == p2p.PassedParked {
			break
		}
		id, lease, ok := v.Acquire("m", []peer.ID{free, full})
		if !ok {
			t.Fatal("no instance to fail on")
		}
		if id != flaky {
			t.Fatalf("acquired %s, want the flaky one", id)
		}
		lease.Done(route.Failure, 0, 0)
	}
	got := v.passedOver("m")
	if got[full.String()] != p2p.PassedFull || got[flaky.String()] != p2p.PassedParked || got[free.String()] != "" {
		t.Fatalf("passed over = %v", got)
	}

	var o outcomes
	for range 3 {
		o.add(free, "m", route.Success)
	}
	o.turnedAway("m")
	o.add(free, "other", route.Success) // another model's calls are not m's
	reports, _ := o.take(v.passedOver)
	by := map[string]p2p.OutcomeReport{}
	for _, r := range reports {
		by[r.Node+"/"+r.Model] = r
	}
	if r := by[full.String()+"/m"]; r.PassedOver[p2p.PassedFull] != 4 {
		t.Fatalf("full's report = %+v; want 4 calls passed over", r)
	}
	if r := by[flaky.String()+"/m"]; r.PassedOver[p2p.PassedParked] != 4 {
		t.Fatalf("flaky's report = %+v", r)
	}
	if r, ok := by[free.String()+"/m"]; ok && len(r.PassedOver) > 0 {
		t.Fatalf("free was passed over: %+v", r)
	}
	// The next report starts afresh.
	if reports, _ := o.take(v.passedOver); len(reports) != 0 {
		t.Fatalf("second report = %+v", reports)
	}
}
