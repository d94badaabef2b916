package gateway

import (
	"net/http"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// observeWorld is a view with two nodes announcing capacity 8 of "m".
type observeWorld struct {
	v             *View
	now           time.Time
	liar, honest  peer.ID
	seq           uint64
	liarInFlight  int
	otherInFlight int // calls another gateway holds on the liar, per its announcement
}

func newObserveWorld(t *testing.T) *observeWorld {
	_, liar := testkit.RandomPeer(t)
	_, honest := testkit.RandomPeer(t)
	w := &observeWorld{now: time.Unix(1_700_000_000, 0), liar: liar, honest: honest}
	w.v = NewView("gw", route.DefaultConfig(), func() time.Time { return w.now }, 10*time.Second, 1)
	w.v.rampStart = 1 // no ramp-up: capacity is what it announced
	w.announce()
	return w
}

// announce has both nodes announce (the liar says it holds liarInFlight
// calls, otherInFlight of them another gateway's).
func (w *observeWorld) announce() {
	w.seq++
	for _, id := range []peer.ID{w.liar, w.honest} {
		m := p2p.ModelLoad{Model: "m", Capacity: 8}
		if id == w.liar {
			m.InFlight = w.liarInFlight
			m.InFlightBy = map[string]int{"other": w.otherInFlight, "gw": w.liarInFlight - w.otherInFlight}
		}
		w.v.Update(id, &p2p.Announcement{Node: id.String(), Models: []p2p.ModelLoad{m}, TokPerSec: 50, TimeMs: w.now.UnixMilli(), Seq: w.seq})
	}
}

// on acquires a call on node (the other excluded).
func (w *observeWorld) on(t *testing.T, node peer.ID) *Lease {
	t.Helper()
	other := w.honest
	if node == w.honest {
		other = w.liar
	}
	got, l, ok := w.v.Acquire("m", []peer.ID{other})
	if !ok || got != node {
		t.Fatalf("acquire on %s: got %s, %v", node, got, ok)
	}
	return l
}

func (w *observeWorld) info(t *testing.T, node peer.ID) InstanceInfo {
	t.Helper()
	for _, m := range w.v.Models() {
		for _, in := range m.Instances {
			if in.Node == node.String() {
				return in
			}
		}
	}
	t.Fatalf("%s not listed", node)
	return InstanceInfo{}
}

// share is the liar's share of n sequential calls on an idle network.
func (w *observeWorld) share(n int) float64 {
	liar := 0
	for range n {
		id, l, _ := w.v.Acquire("m", nil)
		if id == w.liar {
			liar++
		}
		l.Done(route.Success, 0, 0)
	}
	return float64(liar) / float64(n)
}

// A node announcing capacity 8 that refuses its third call: the refusal
// is a lie (six slots looked free), it is penalised, capped at the two it
// served, and wins fewer ties; the cap grows back one slot every 30 s and
// the penalty fades.
func TestObserveCapacityLie(t *testing.T) {
	w := newObserveWorld(t)
	if s := w.share(2000); s < 0.45 || s > 0.55 {
		t.Fatalf("before any lie the liar's share of ties is %.2f, want ~0.5", s)
	}
	served := []*Lease{w.on(t, w.liar), w.on(t, w.liar)}
	third := w.on(t, w.liar)
	w.v.observeFull(third) // 429
	third.Done(route.Full, 0, 0)
	pen := w.v.obs.scores.Penalty(w.liar)
	if pen < 0.74 || pen > 0.76 {
		t.Errorf("penalty %.3f, want 0.75 (6 of 8 slots looked free)", pen)
	}
	for _, l := range served {
		l.Done(route.Success, 0, 0)
	}

	w.announce()
	in := w.info(t, w.liar)
	if in.Capacity != 2 || in.Declared != 8 {
		t.Errorf("capacity %.0f (declared %d), want capped at the 2 it served", in.Capacity, in.Declared)
	}
	trust := 1 / (1 + 3*pen)
	if d := in.Weight - trust; d > 0.01 || d < -0.01 {
		t.Errorf("tie weight %.3f, want %.3f", in.Weight, trust)
	}
	if h := w.info(t, w.honest); h.Weight != 1 || h.Capacity != 8 {
		t.Errorf("the honest node was touched: %+v", h)
	}
	s := w.share(2000)
	t.Logf("the liar's share of ties: %.2f (trust %.2f)", s, trust)
	if s > 0.3 {
		t.Errorf("after a lie the liar won %.2f of ties, want under 0.3", s)
	}

	// A third concurrent call is not offered while capped.
	a, b := w.on(t, w.liar), w.on(t, w.liar)
	if got, l, ok := w.v.Acquire("m", nil); !ok || got != w.honest {
		t.Errorf("with its 2 slots busy the liar got a third call (%s)", got)
	} else {
		l.Done(route.Success, 0, 0)
	}
	a.Done(route.Success, 0, 0)
	b.Done(route.Success, 0, 0)

	w.now = w.now.Add(30 * time.Second)
	w.announce()
	if c := w.info(t, w.liar).Capacity; c != 3 {
		t.Errorf("30 s on: capacity %.0f, want 3", c)
	}
	w.now = w.now.Add(3 * time.Minute)
	w.announce()
	if c := w.info(t, w.liar).Capacity; c != 8 {
		t.Errorf("3.5 min on: capacity %.0f, want the 8 it announces", c)
	}
	if got := w.v.obs.scores.Penalty(w.liar); got > pen/3 {
		t.Errorf("3.5 min on: penalty %.2f of %.2f, want under a third (2 min half-life)", got, pen)
	}
}

// A 429 the view could not tell from a full node costs nothing: another
// gateway holds 6 of the node's 8 slots, as its announcement says, and the
// second call here is refused. One slot looked free: too little to tell a
// lie from a view a second old.
func TestObserveHonestFull(t *testing.T) {
	w := newObserveWorld(t)
	w.liarInFlight, w.otherInFlight = 6, 6
	w.announce()
	first := w.on(t, w.liar)
	second := w.on(t, w.liar)
	w.v.observeFull(second)
	first.Done(route.Success, 0, 0)
	second.Done(route.Full, 0, 0)
	if w.v.obs.scores != nil {
		t.Errorf("penalised %.2f", w.v.obs.scores.Penalty(w.liar))
	}
	w.announce()
	if c := w.info(t, w.liar).Capacity; c != 8 {
		t.Errorf("capacity %.0f after an honest 429, want 8", c)
	}
}

// A node saying it does not serve a model it announced is penalised; a
// crash or a consumer's error is not a lie.
func TestObserveModelLie(t *testing.T) {
	w := newObserveWorld(t)
	for _, tc := range []struct {
		status int
		code   string
		lie    bool
	}{
		{http.StatusInternalServerError, "", false},
		{http.StatusBadGateway, "upstream_unreachable", false},
		{http.StatusNotFound, "unknown_endpoint", false},
		{http.StatusNotFound, "model_not_found", true},
		{http.StatusBadGateway, "upstream_refused", true},
	} {
		before := 0.0
		if w.v.obs.scores != nil {
			before = w.v.obs.scores.Penalty(w.liar)
		}
		l := w.on(t, w.liar)
		w.v.observeRefusal(l, tc.status, tc.code)
		l.Done(route.Neutral, 0, 0) // the breaker is not under test
		after := 0.0
		if w.v.obs.scores != nil {
			after = w.v.obs.scores.Penalty(w.liar)
		}
		if got := after > before; got != tc.lie {
			t.Errorf("%d %q: penalised %v, want %v", tc.status, tc.code, got, tc.lie)
		}
	}
	if w := w.info(t, w.liar).Weight; w > 0.2 {
		t.Errorf("two lies: tie weight %.2f", w)
	}
}
