package gateway

import (
	"strings"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// Two hosts behind one peer id: refused (no candidate, not in Models, in
// DebugModels with the reason), the honest node still served, and the
// survivor readmitted 15 s after the other host's last word. A settlement
// refusal alone refuses too, until a report without it.
func TestViewRefusesTwins(t *testing.T) {
	_, twin := testkit.RandomPeer(t)
	_, honest := testkit.RandomPeer(t)
	now := time.Unix(1_700_000_000, 0)
	v := NewView("gw", route.DefaultConfig(), func() time.Time { return now }, 10*time.Second, 1)
	ann := func(id string, port string, seq uint64) *p2p.Announcement {
		return &p2p.Announcement{Node: id, Addrs: []string{"/ip4/127.0.0.1/tcp/" + port + "/p2p/" + id}, Seq: seq,
			Models: []p2p.ModelLoad{{Model: "m", Capacity: 4}}, TokPerSec: 50}
	}
	step := func(d time.Duration) { now = now.Add(d); v.expire() }
	picks := func() map[string]bool {
		got := map[string]bool{}
		for range 20 {
			if id, l, ok := v.Acquire("m", nil); ok {
				got[id.String()] = true
				l.Done(route.Success, 0, 0)
			}
		}
		return got
	}
	v.Update(honest, ann(honest.String(), "1000", 1))
	v.Update(twin, ann(twin.String(), "4001", 1_000))
	if p := picks(); !p[twin.String()] || !p[honest.String()] {
		t.Fatalf("before the copy: picks %v", p)
	}
	// The copy (a later start: higher seq) comes in order; the original turns stray.
	for k := range uint64(3) {
		step(time.Second)
		v.Update(twin, ann(twin.String(), "4002", 5_000_000_000+k))
		v.Update(honest, ann(honest.String(), "1000", 2+k))
		step(time.Second)
		v.Stray(twin, ann(twin.String(), "4001", 1_001+k))
	}
	if p := picks(); p[twin.String()] || !p[honest.String()] {
		t.Fatalf("while twins: picks %v", p)
	}
	for _, m := range v.Models() {
		for _, in := range m.Instances {
			if in.Node == twin.String() {
				t.Fatal("Models lists the refused node")
			}
		}
	}
	var found bool
	for _, m := range v.DebugModels() {
		for _, in := range m.Instances {
			if in.Node == twin.String() {
				found = in.State == "refused" && in.Status == p2p.RefusedDuplicateIdentity && in.RefusedBy == "gateway" &&
					strings.Contains(in.Reason, "[/ip4/127.0.0.1/tcp/4001] and [/ip4/127.0.0.1/tcp/4002]")
				if !found {
					t.Fatalf("debug entry %+v", in)
				}
			}
		}
	}
	if !found {
		t.Fatal("DebugModels does not list the refused node")
	}
	// The copy stops; the original goes on (stray until the validator takes
	// it back in order 10 s later; here, in order at once).
	last := now
	for now.Sub(last) <= 15*time.Second {
		step(time.Second)
		v.Update(twin, ann(twin.String(), "4001", 2_000+uint64(now.Unix())))
		v.Update(honest, ann(honest.String(), "1000", uint64(now.Unix())))
		if _, _, ok := v.Refused(twin); !ok {
			break
		}
	}
	if _, _, ok := v.Refused(twin); ok {
		t.Fatal("not readmitted 15 s after the copy stopped")
	}
	if p := picks(); !p[twin.String()] {
		t.Fatalf("readmitted but not picked: %v", p)
	}

	// The settlement peer's word alone.
	v.SetReport(&p2p.HealthReport{Refused: []p2p.Refusal{{Node: honest.String(), Status: p2p.RefusedDuplicateIdentity, Reason: "two hosts announce peer X"}}})
	if p := picks(); p[honest.String()] {
		t.Fatalf("refused by settlement, still picked: %v", p)
	}
	v.SetReport(&p2p.HealthReport{})
	if p := picks(); !p[honest.String()] {
		t.Fatalf("cleared by settlement, not picked: %v", p)
	}
}
