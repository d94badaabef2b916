package settlement

import (
	"crypto/rand"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/nodecore"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// repT0 is a fixed instant ten minutes into an hour (gatewayBook counts in
// wall-clock hours).
var repT0 = time.Unix(472222*3600+600, 0).UTC()

func announce(node string, models ...string) *p2p.Announcement {
	a := &p2p.Announcement{Node: node}
	for _, m := range models {
		a.Models = append(a.Models, p2p.ModelLoad{Model: m, Capacity: 4})
	}
	return a
}

func repTotals(t *testing.T, r *Reputation, node, model string, now time.Time) (counts [5]uint64, online time.Duration) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	in := r.instances[node+"/"+model]
	if in == nil {
		return counts, 0
	}
	c, online := in.Window.Totals(r.cfg.Health, now)
	return c, online
}

func scoreOf(t *testing.T, r *Reputation, node, model string, now time.Time) p2p.InstanceScore {
	t.Helper()
	for _, s := range r.Scores(now) {
		if s.Node == node && s.Model == model {
			return s
		}
	}
	t.Fatalf("%s/%s is not scored at %v", node, model, now)
	return p2p.InstanceScore{}
}

func TestReputationConfigValidate(t *testing.T) {
	if err := DefaultReputationConfig().Validate(); err != nil {
		t.Fatalf("default: %v", err)
	}
	for name, f := range map[string]func(*ReputationConfig){
		"health":  func(c *ReputationConfig) { c.Health.Bucket = 0 },
		"ramp":    func(c *ReputationConfig) { c.Ramp.Start = 0 },
		"gap":     func(c *ReputationConfig) { c.OnlineGap = 0 },
		"live":    func(c *ReputationConfig) { c.LiveFor = -1 },
		"publish": func(c *ReputationConfig) { c.PublishEvery = 0 },
		"probe":   func(c *ReputationConfig) { c.ProbeEvery = 0 },
		"timeout": func(c *ReputationConfig) { c.ProbeTimeout = 0 },
		"save":    func(c *ReputationConfig) { c.SaveEvery = 0 },
	} {
		c := DefaultReputationConfig()
		f(&c)
		if c.Validate() == nil {
			t.Errorf("%s: a bad config validated", name)
		}
	}
}

func TestAnnouncedFresh(t *testing.T) {
	r := NewReputation(DefaultReputationConfig())
	steps := []struct {
		a     *p2p.Announcement
		at    time.Duration
		fresh bool
	}{
		{announce("n1", "m1"), 0, true},
		{announce("n1", "m1"), time.Second, false},
		{announce("n1", "m1", "m2"), 2 * time.Second, true}, // a new model is a new instance
		{announce("n1", "m2", "m1"), 3 * time.Second, false},
		{announce("n2", "m1"), 4 * time.Second, true}, // same model, another node
		{announce("n2"), 5 * time.Second, false},      // no models
		{announce("n1", "m1"), time.Hour, false},      // back after a silence: not fresh
	}
	for i, s := range steps {
		if got := r.Announced(s.a, repT0.Add(s.at)); got != s.fresh {
			t.Errorf("step %d: fresh = %v, want %v", i, got, s.fresh)
		}
	}
}

func TestAnnouncedOnlineTime(t *testing.T) {
	cfg := DefaultReputationConfig()
	r := NewReputation(cfg)
	at := repT0
	step := func(d time.Duration) {
		at = at.Add(d)
		r.Announced(announce("n", "m"), at)
	}
	step(0) // first sight: no online time yet
	if _, on := repTotals(t, r, "n", "m", at); on != 0 {
		t.Fatalf("online %v after first sight", on)
	}
	step(3 * time.Second)
	step(3 * time.Second)
	step(cfg.OnlineGap) // exactly the gap still counts
	want := 6*time.Second + cfg.OnlineGap
	if _, on := repTotals(t, r, "n", "m", at); on != want {
		t.Fatalf("online %v, want %v", on, want)
	}
	step(60 * time.Second) // a silence: offline
	step(cfg.OnlineGap + time.Nanosecond)
	if _, on := repTotals(t, r, "n", "m", at); on != want {
		t.Fatalf("online %v after silences, want %v", on, want)
	}
	step(2 * time.Second)
	want += 2 * time.Second
	// An announcement from the past or at the same instant adds nothing.
	r.Announced(announce("n", "m"), at)
	if _, on := repTotals(t, r, "n", "m", at); on != want {
		t.Fatalf("online %v, want %v", on, want)
	}
	// Two models of one node accrue separately and equally.
	r2 := NewReputation(cfg)
	for i := range 11 {
		r2.Announced(announce("n", "a", "b"), repT0.Add(time.Duration(i)*3*time.Second))
	}
	for _, m := range []string{"a", "b"} {
		if _, on := repTotals(t, r2, "n", m, repT0.Add(30*time.Second)); on != 30*time.Second {
			t.Errorf("model %s online %v, want 30s", m, on)
		}
	}
}

func TestScoresLiveSortedRamp(t *testing.T) {
	cfg := DefaultReputationConfig()
	r := NewReputation(cfg)
	r.Announced(announce("n2", "m2", "m1"), repT0)
	r.Announced(announce("n1", "m3"), repT0)
	r.Announced(announce("n3", "m1"), repT0)

	got := r.Scores(repT0)
	var keys []string
	for _, s := range got {
		keys = append(keys, s.Node+"/"+s.Model)
		if s.Ramp != cfg.Ramp.Start || s.Score != 0.9 || s.FirstSeenMs != repT0.UnixMilli() {
			t.Errorf("newcomer %+v", s)
		}
	}
	if want := []string{"n1/m3", "n2/m1", "n2/m2", "n3/m1"}; !slices.Equal(keys, want) {
		t.Errorf("scores %v, want %v", keys, want)
	}

	// Only instances announced within LiveFor are listed.
	r.Announced(announce("n2", "m1"), repT0.Add(20*time.Second))
	now := repT0.Add(cfg.LiveFor)
	if n := len(r.Scores(now)); n != 4 { // exactly LiveFor ago: still live
		t.Errorf("%d live at LiveFor, want 4", n)
	}
	now = repT0.Add(cfg.LiveFor + time.Millisecond)
	if got := r.Scores(now); len(got) != 1 || got[0].Node != "n2" || got[0].Model != "m1" {
		t.Errorf("live after LiveFor: %+v, want only n2/m1", got)
	}
	if got := r.Scores(repT0.Add(time.Hour)); len(got) != 0 {
		t.Errorf("live an hour later: %+v", got)
	}
	// Recorded but never announced is not live.
	r.Record("n9", "m9", nodecore.EventSuccess, 1, repT0.Add(time.Hour))
	if got := r.Scores(repT0.Add(time.Hour)); len(got) != 0 {
		t.Errorf("unannounced instance scored: %+v", got)
	}

	// The ramp follows the ramp config from the first announcement.
	for _, tt := range []struct {
		age  time.Duration
		want float64
	}{
		{0, 0.10},
		{84 * time.Hour, 0.55},
		{7 * 24 * time.Hour, 1},
		{30 * 24 * time.Hour, 1},
	} {
		r := NewReputation(cfg)
		r.Announced(announce("n", "m"), repT0)
		now := repT0.Add(tt.age)
		r.Announced(announce("n", "m"), now)
		s := scoreOf(t, r, "n", "m", now)
		if math.Abs(s.Ramp-tt.want) > 1e-12 || s.FirstSeenMs != repT0.UnixMilli() {
			t.Errorf("age %v: ramp %v first seen %d, want %v and %d", tt.age, s.Ramp, s.FirstSeenMs, tt.want, repT0.UnixMilli())
		}
	}
}

func TestReputationRecord(t *testing.T) {
	cfg := DefaultReputationConfig()
	tests := []struct {
		e    nodecore.Event
		n    uint32
		sign int
	}{
		{nodecore.EventSuccess, 1, +1},
		{nodecore.EventProbeOK, 1, +1},
		{nodecore.EventFailure, 1, -1},
		{nodecore.EventProbeFail, 1, -1},
		{nodecore.EventNeutral, 50, 0},
		{nodecore.EventFailure, 0, 0},
	}
	for _, tt := range tests {
		r := NewReputation(cfg)
		r.Announced(announce("n", "m"), repT0)
		now := repT0.Add(time.Second)
		r.Announced(announce("n", "m"), now)
		before := scoreOf(t, r, "n", "m", now).Score
		r.Record("n", "m", tt.e, tt.n, now)
		after := scoreOf(t, r, "n", "m", now).Score
		var sign int
		switch {
		case after > before:
			sign = 1
		case after < before:
			sign = -1
		}
		if sign != tt.sign {
			t.Errorf("%d x event %d: %v -> %v, want direction %d", tt.n, tt.e, before, after, tt.sign)
		}
	}
	// Recording zero events creates nothing.
	r := NewReputation(cfg)
	r.Record("n", "m", nodecore.EventFailure, 0, repT0)
	if len(r.instances) != 0 {
		t.Errorf("Record of zero events created %d instances", len(r.instances))
	}
}

func TestReputationSaveLoad(t *testing.T) {
	cfg := DefaultReputationConfig()
	r := NewReputation(cfg)
	for i := range 20 {
		at := repT0.Add(time.Duration(i) * 3 * time.Second)
		r.Announced(announce("n1", "m1", "m2"), at)
		if i >= 10 {
			r.Announced(announce("n2", "m1"), at)
		}
	}
	now := repT0.Add(57 * time.Second)
	r.Record("n1", "m1", nodecore.EventFailure, 3, now)
	r.Record("n1", "m2", nodecore.EventSuccess, 5, now)
	r.Record("n2", "m1", nodecore.EventProbeFail, 1, now)
	want := r.Scores(now)

	path := filepath.Join(t.TempDir(), "health.json")
	if err := r.Save(path); err != nil {
		t.Fatal(err)
	}
	l := NewReputation(cfg)
	if err := l.Load(path); err != nil {
		t.Fatal(err)
	}
	got := l.Scores(now)
	if !slices.Equal(got, want) {
		t.Fatalf("after a round trip\n got %+v\nwant %+v", got, want)
	}
	// Still the same instances: not fresh, first seen kept, and still
	// accruing online time the same way.
	next := now.Add(3 * time.Second)
	for _, x := range []*Reputation{r, l} {
		if x.Announced(announce("n1", "m1"), next) {
			t.Error("a restored instance announced as fresh")
		}
	}
	if a, b := scoreOf(t, r, "n1", "m1", next), scoreOf(t, l, "n1", "m1", next); a != b {
		t.Errorf("restored diverged: %+v vs %+v", b, a)
	}
	if s := scoreOf(t, l, "n2", "m1", now); s.FirstSeenMs != repT0.Add(30*time.Second).UnixMilli() {
		t.Errorf("n2 first seen %d", s.FirstSeenMs)
	}
	// A file of Load replaces what was there.
	l2 := NewReputation(cfg)
	l2.Announced(announce("n9", "m9"), now)
	if err := l2.Load(path); err != nil {
		t.Fatal(err)
	}
	if got := l2.Scores(now); !slices.Equal(got, want) {
		t.Errorf("Load over a live reputation: %+v", got)
	}
}

func TestReputationLoadErrors(t *testing.T) {
	dir := t.TempDir()
	r := NewReputation(DefaultReputationConfig())
	r.Announced(announce("n", "m"), repT0)
	if err := r.Load(filepath.Join(dir, "missing.json")); err != nil {
		t.Fatalf("missing file: %v", err)
	}
	if len(r.Scores(repT0)) != 1 {
		t.Error("a missing file dropped the window")
	}
	for name, body := range map[string]string{
		"garbage":   "not json at all",
		"truncated": `{"n/m":{"node":"n","model":"m","window":{"first_seen":"2023-`,
		"empty":     "",
		"wrong":     `[1,2,3]`,
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := r.Load(p); err == nil {
			t.Errorf("%s: Load succeeded", name)
		}
	}
	if len(r.Scores(repT0)) != 1 {
		t.Error("a bad file dropped the window")
	}
	if err := r.Load(dir); err == nil { // a directory
		t.Error("Load of a directory succeeded")
	}
}

// noPanic runs f and fails the test if it panics.
func noPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if p := recover(); p != nil {
			t.Errorf("%s panicked: %v", what, p)
		}
	}()
	f()
}

func TestReputationLoadWellFormedButWrong(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"null":      `null`,
		"nil entry": `{"n/m":null}`,
		"no window": `{"n/m":{"node":"n","model":"m","last_seen":"2023-11-14T22:13:20Z"}}`,
	} {
		p := filepath.Join(dir, "snap")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		r := NewReputation(DefaultReputationConfig())
		if err := r.Load(p); err != nil {
			continue // rejecting it is fine too
		}
		noPanic(t, name+": Scores", func() { r.Scores(repT0) })
		noPanic(t, name+": Announced", func() { r.Announced(announce("n", "m"), repT0) })
		noPanic(t, name+": Record", func() { r.Record("n", "m", nodecore.EventFailure, 1, repT0) })
	}
}

func testPeerID(t *testing.T) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func newRepSettlement(cfg ReputationConfig) *Settlement {
	return &Settlement{
		cfg: Config{Reputation: cfg},
		rep: NewReputation(cfg),
		log: slog.New(slog.DiscardHandler),
	}
}

func failuresOf(t *testing.T, s *Settlement, node, model string, now time.Time) uint64 {
	t.Helper()
	c, _ := repTotals(t, s.rep, node, model, now)
	return c[nodecore.EventFailure]
}

func TestTakeReportsUngranted(t *testing.T) {
	s := newRepSettlement(DefaultReputationConfig())
	gw, node := testPeerID(t), testPeerID(t).String()
	s.takeReports(gw, []p2p.OutcomeReport{{Node: node, Model: "m", Failures: 10}}, repT0)
	if n := failuresOf(t, s, node, "m", repT0); n != 0 {
		t.Errorf("an ungranted gateway recorded %d failures", n)
	}
	// A grant seen more than GrantTTL ago no longer counts.
	s.gateways.seen(gw, repT0)
	late := repT0.Add(GrantTTL + time.Second)
	s.takeReports(gw, []p2p.OutcomeReport{{Node: node, Model: "m", Failures: 10}}, late)
	if n := failuresOf(t, s, node, "m", late); n != 0 {
		t.Errorf("a gateway whose grant expired recorded %d failures", n)
	}
	// Another gateway's grant does not count for this one.
	s.gateways.seen(testPeerID(t), late)
	s.takeReports(gw, []p2p.OutcomeReport{{Node: node, Model: "m", Failures: 10}}, late)
	if n := failuresOf(t, s, node, "m", late); n != 0 {
		t.Errorf("recorded %d failures on another gateway's grant", n)
	}
}

func TestTakeReportsUngrantedNeutral(t *testing.T) {
	s := newRepSettlement(DefaultReputationConfig())
	gw, node := testPeerID(t), testPeerID(t).String()
	s.takeReports(gw, []p2p.OutcomeReport{{Node: node, Model: "m", Neutral: 5}}, repT0)
	if c, _ := repTotals(t, s.rep, node, "m", repT0); c[nodecore.EventNeutral] != 0 {
		t.Errorf("an ungranted gateway recorded %d neutral outcomes", c[nodecore.EventNeutral])
	}
	later := repT0.Add(7 * 24 * time.Hour)
	if !s.rep.Announced(announce(node, "m"), later) {
		t.Error("the node's first announcement is not fresh")
	}
	if sc := scoreOf(t, s.rep, node, "m", later); sc.Ramp != nodecore.DefaultRampConfig().Start {
		t.Errorf("ramp at first announcement %v, want %v", sc.Ramp, nodecore.DefaultRampConfig().Start)
	}
}

func TestTakeReportsCap(t *testing.T) {
	s := newRepSettlement(DefaultReputationConfig())
	gw, other := testPeerID(t), testPeerID(t)
	node, node2 := testPeerID(t).String(), testPeerID(t).String()
	s.gateways.seen(gw, repT0)
	s.gateways.seen(other, repT0)
	// Reports count only for instances that announced themselves.
	s.rep.Announced(&p2p.Announcement{Node: node, Models: []p2p.ModelLoad{{Model: "m"}, {Model: "m2"}}}, repT0)
	s.rep.Announced(&p2p.Announcement{Node: node2, Models: []p2p.ModelLoad{{Model: "m"}}}, repT0)

	steps := []struct {
		at      time.Duration
		from    peer.ID
		reports []p2p.OutcomeReport
		want    map[string]uint64 // node/model -> failures in the window
	}{
		{0, gw, []p2p.OutcomeReport{{Node: node, Model: "m", Failures: 25}},
			map[string]uint64{node + "/m": 25}},
		{time.Minute, gw, []p2p.OutcomeReport{{Node: node, Model: "m", Failures: 25}, {Node: node, Model: "m", Failures: 25}},
			map[string]uint64{node + "/m": 60}}, // capped within one report too
		{2 * time.Minute, gw, []p2p.OutcomeReport{{Node: node, Model: "m", Failures: 1}},
			map[string]uint64{node + "/m": 60}},
		{3 * time.Minute, gw, []p2p.OutcomeReport{{Node: node, Model: "m2", Failures: 100}, {Node: node2, Model: "m", Failures: 7}},
			map[string]uint64{node + "/m": 60, node + "/m2": 60, node2 + "/m": 7}}, // per instance
		{4 * time.Minute, other, []p2p.OutcomeReport{{Node: node, Model: "m", Failures: math.MaxUint32}},
			map[string]uint64{node + "/m": 120}}, // per gateway
		{5 * time.Minute, gw, []p2p.OutcomeReport{
			{Node: "not-a-peer-id", Model: "m", Failures: 5, Neutral: 5},
			{Node: "", Model: "m", Failures: 5},
			{Node: node2, Model: "", Failures: 5, Neutral: 5},
		}, map[string]uint64{"not-a-peer-id/m": 0, node2 + "/": 0, node2 + "/m": 7}},
		// The next hour (gateway seen again by a new grant): the cap resets.
		{time.Hour, gw, []p2p.OutcomeReport{{Node: node, Model: "m", Failures: 100}},
			map[string]uint64{node + "/m": 180}},
		{time.Hour + time.Minute, gw, []p2p.OutcomeReport{{Node: node, Model: "m", Failures: 100}},
			map[string]uint64{node + "/m": 180}},
	}
	for i, st := range steps {
		now := repT0.Add(st.at)
		if st.at >= time.Hour {
			s.gateways.seen(st.from, now)
		}
		s.takeReports(st.from, st.reports, now)
		for k, want := range st.want {
			in := s.rep.instances[k]
			var got uint64
			if in != nil {
				c, _ := in.Window.Totals(s.rep.cfg.Health, now)
				got = c[nodecore.EventFailure]
			}
			if got != want {
				t.Errorf("step %d: %s has %d failures, want %d", i, k, got, want)
			}
		}
	}
	if _, ok := s.rep.instances["not-a-peer-id/m"]; ok {
		t.Error("a report against a bad node id created an instance")
	}
	// Neutral outcomes are capped per report, and never hurt the score.
	s.takeReports(gw, []p2p.OutcomeReport{{Node: node2, Model: "m", Neutral: 1000}}, repT0.Add(2*time.Hour))
	if c, _ := repTotals(t, s.rep, node2, "m", repT0.Add(2*time.Hour)); c[nodecore.EventNeutral] != maxReportsPerHour {
		t.Errorf("%d neutral outcomes recorded, want %d", c[nodecore.EventNeutral], maxReportsPerHour)
	}
}

func TestHealthReportsSplit(t *testing.T) {
	cfg := DefaultReputationConfig()
	cfg.Health.Window = time.Hour // one bucket per instance: thousands stay cheap
	for _, n := range []int{0, 1, p2p.MaxScoresPerReport, p2p.MaxScoresPerReport + 1, 2*p2p.MaxScoresPerReport + 1} {
		s := newRepSettlement(cfg)
		for i := range n {
			s.rep.Announced(announce(fmt.Sprintf("node%05d", i), "m"), repT0)
		}
		now := repT0.Add(time.Second)
		want := s.rep.Scores(now)
		seq := uint64(41)
		reports := s.healthReports(&seq, now)
		wantReports := max(1, (n+p2p.MaxScoresPerReport-1)/p2p.MaxScoresPerReport)
		if len(reports) != wantReports {
			t.Errorf("%d scores: %d reports, want %d", n, len(reports), wantReports)
		}
		var all []p2p.InstanceScore
		last := uint64(41)
		for i, r := range reports {
			if r.Seq <= last {
				t.Errorf("%d scores: report %d seq %d after %d", n, i, r.Seq, last)
			}
			last = r.Seq
			if len(r.Scores) > p2p.MaxScoresPerReport {
				t.Errorf("%d scores: report %d holds %d", n, i, len(r.Scores))
			}
			if r.TimeMs != now.UnixMilli() || r.RampStart != cfg.Ramp.Start {
				t.Errorf("%d scores: report %d time %d ramp start %v", n, i, r.TimeMs, r.RampStart)
			}
			all = append(all, r.Scores...)
		}
		if seq != last {
			t.Errorf("%d scores: seq left at %d, last used %d", n, seq, last)
		}
		if len(all) != n || (n > 0 && !slices.Equal(all, want)) {
			t.Errorf("%d scores: the reports carry %d scores, not the sorted set", n, len(all))
		}
	}
}

// TestAnnouncedUnderAWideBudget: a node of a large network announces
// seldom (its gossip budget's heartbeat, Announcement.EveryMs); it is online
// and live between heartbeats, and offline once it misses them.
func TestAnnouncedUnderAWideBudget(t *testing.T) {
	cfg := DefaultReputationConfig()
	r := NewReputation(cfg)
	every := 40 * time.Second
	a := announce("n", "m")
	a.EveryMs = every.Milliseconds()
	at := repT0
	for range 4 {
		r.Announced(a, at)
		at = at.Add(every)
	}
	at = at.Add(-every) // the last announcement
	if _, on := repTotals(t, r, "n", "m", at); on != 3*every {
		t.Fatalf("online %v across heartbeats %v apart, want %v", on, every, 3*every)
	}
	if got := r.Scores(at.Add(2 * every)); len(got) != 1 {
		t.Fatalf("two heartbeats after its last: %d live, want 1", len(got))
	}
	if got := r.Scores(at.Add(3*every + time.Millisecond)); len(got) != 0 {
		t.Fatalf("three heartbeats after its last: %+v still live", got)
	}
	// Silent past two heartbeats and a second: that span is offline.
	r.Announced(a, at.Add(2*every+time.Second+time.Millisecond))
	if _, on := repTotals(t, r, "n", "m", at.Add(3*every)); on != 3*every {
		t.Fatalf("online %v after a silence of two heartbeats, want %v", on, 3*every)
	}
}

// What an operator sees of a node: per model its load, rate, health,
// ramp-up, earnings and the calls it lost and why; kept across restarts.
func TestReputationNodeView(t *testing.T) {
	cfg := DefaultReputationConfig()
	r := NewReputation(cfg)
	a := announce("n", "a", "b")
	a.TokPerSec = 42
	a.Models[0].InFlight = 3
	r.Announced(a, repT0)
	r.Paid("n", "a", 800)
	r.Paid("n", "a", 200)
	r.Paid("ghost", "a", 1_000_000) // never announced: not tracked
	r.PassedOver("n", "a", p2p.PassedFull, 5)
	r.PassedOver("n", "a", p2p.PassedParked, 2)
	r.PassedOver("n", "b", "made-up", 9) // not a reason: dropped
	r.Record("n", "b", nodecore.EventFailure, 4, repT0)

	got := r.Node("n", repT0.Add(time.Second))
	if len(got) != 2 || got[0].Model != "a" || got[1].Model != "b" {
		t.Fatalf("Node = %+v", got)
	}
	if g := got[0]; !g.Live || g.Calls != 2 || g.EarnedUcr != 1000 || g.TokPerSec != 42 || g.InFlight != 3 || g.Capacity != 4 ||
		g.Lost[p2p.PassedFull] != 5 || g.Lost[p2p.PassedParked] != 2 || g.Ramp <= 0 || g.Ramp > 1 {
		t.Fatalf("a = %+v", g)
	}
	if g := got[1]; len(g.Lost) != 0 || g.Failures != 4 || g.Calls != 0 {
		t.Fatalf("b = %+v", g)
	}
	if r.Node("ghost", repT0) != nil {
		t.Fatal("an unannounced node has instances")
	}
	// Offline after LiveFor of silence.
	if got := r.Node("n", repT0.Add(cfg.LiveFor+time.Second)); got[0].Live {
		t.Fatal("still live after a silence")
	}
	// The counters survive the snapshot.
	path := filepath.Join(t.TempDir(), "rep.json")
	if err := r.Save(path); err != nil {
		t.Fatal(err)
	}
	r2 := NewReputation(cfg)
	if err := r2.Load(path); err != nil {
		t.Fatal(err)
	}
	if g := r2.Node("n", repT0)[0]; g.EarnedUcr != 1000 || g.Calls != 2 || g.Lost[p2p.PassedFull] != 5 {
		t.Fatalf("after reload a = %+v", g)
	}
}
