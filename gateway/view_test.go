package gateway

import (
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// TestViewKeepsSeldomAnnouncers: a node of a large network announces only
// every EveryMs (its gossip budget). The view keeps it a candidate between
// heartbeats and drops it when it misses two; a node with the old 3 s
// heartbeat still drops after the 10 s maxAge.
func TestViewKeepsSeldomAnnouncers(t *testing.T) {
	_, slow := testkit.RandomPeer(t)
	_, fast := testkit.RandomPeer(t)
	now := time.Unix(1_700_000_000, 0)
	v := NewView("gw", route.DefaultConfig(), func() time.Time { return now }, 10*time.Second, 1)
	ann := func(id string, every time.Duration) *p2p.Announcement {
		return &p2p.Announcement{Node: id, Models: []p2p.ModelLoad{{Model: "m", Capacity: 4}}, TokPerSec: 50, EveryMs: every.Milliseconds()}
	}
	v.Update(slow, ann(slow.String(), 40*time.Second))
	v.Update(fast, ann(fast.String(), 0))
	listed := func() map[string]bool {
		got := map[string]bool{}
		for _, m := range v.Models() {
			for _, in := range m.Instances {
				got[in.Node] = true
			}
		}
		return got
	}
	now = now.Add(11 * time.Second)
	v.expire()
	if got := listed(); !got[slow.String()] || got[fast.String()] {
		t.Fatalf("11 s on: listed %v, want the 40 s announcer only", got)
	}
	now = now.Add(70 * time.Second) // 81 s: two heartbeats and a second
	v.expire()
	if got := listed(); !got[slow.String()] {
		t.Fatalf("81 s on: the 40 s announcer left early")
	}
	now = now.Add(time.Millisecond)
	v.expire()
	if got := listed(); got[slow.String()] {
		t.Fatalf("past two heartbeats: still listed")
	}
}
