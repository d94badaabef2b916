package nodecore

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// t0 is a fixed, hour-aligned instant so that bucket boundaries are known.
var t0 = time.Unix(472222*3600, 0).UTC()

const day = 24 * time.Hour

func near(a, b, eps float64) bool { return math.Abs(a-b) <= eps }

func TestRamp(t *testing.T) {
	c := DefaultRampConfig()
	tests := []struct {
		name string
		cfg  RampConfig
		age  time.Duration
		want float64
	}{
		{"first sight", c, 0, 0.10},
		{"one nanosecond", c, time.Nanosecond, 0.10},
		{"half way", c, 84 * time.Hour, 0.55},
		{"one day", c, day, 0.10 + 0.90/7},
		{"just before full", c, 7*day - time.Second, 1 - 0.9*float64(time.Second)/float64(7*day)},
		{"seven days", c, 7 * day, 1},
		{"beyond", c, 70 * day, 1},
		{"clock skew: before first seen", c, -time.Hour, 0.10},
		{"far before first seen", c, -365 * day, 0.10},
		{"period zero", RampConfig{Start: 0.1, Period: 0}, 0, 1},
		{"period zero, skew", RampConfig{Start: 0.1, Period: 0}, -time.Hour, 1},
		{"start one", RampConfig{Start: 1, Period: 7 * day}, time.Hour, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.cfg.Ramp(t0, t0.Add(tt.age)); !near(got, tt.want, 1e-12) {
				t.Errorf("Ramp(age %v) = %v, want %v", tt.age, got, tt.want)
			}
		})
	}
}

func TestRampProperties(t *testing.T) {
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 1))
		c := RampConfig{Start: 0.001 + 0.999*rng.Float64(), Period: time.Duration(rng.Int64N(int64(30 * day)))}
		if err := c.Validate(); err != nil {
			t.Fatalf("seed %d: %+v: %v", seed, c, err)
		}
		prev := 0.0
		age := -time.Duration(rng.Int64N(int64(day)))
		for range 200 {
			r := c.Ramp(t0, t0.Add(age))
			if r < c.Start || r > 1 || r < prev {
				t.Fatalf("seed %d: %+v: Ramp(age %v) = %v after %v; want monotone in [Start,1]", seed, c, age, r, prev)
			}
			prev = r
			age += time.Duration(rng.Int64N(int64(day)))
		}
	}
}

func TestRampValidate(t *testing.T) {
	tests := []struct {
		cfg RampConfig
		ok  bool
	}{
		{DefaultRampConfig(), true},
		{RampConfig{Start: 1, Period: 0}, true},
		{RampConfig{Start: 0.5, Period: time.Hour}, true},
		{RampConfig{Start: 0, Period: time.Hour}, false},
		{RampConfig{Start: -0.1, Period: time.Hour}, false},
		{RampConfig{Start: 1.01, Period: time.Hour}, false},
		{RampConfig{Start: 0.1, Period: -time.Nanosecond}, false},
	}
	for _, tt := range tests {
		if err := tt.cfg.Validate(); (err == nil) != tt.ok {
			t.Errorf("%+v.Validate() = %v, want ok=%v", tt.cfg, err, tt.ok)
		}
	}
}

func TestValidateRejectsNaN(t *testing.T) {
	if err := (RampConfig{Start: math.NaN(), Period: day}).Validate(); err == nil {
		t.Error("RampConfig{Start: NaN} validated")
	}
	c := DefaultHealthConfig()
	c.PriorSuccess = math.NaN()
	if err := c.Validate(); err == nil {
		t.Error("HealthConfig{PriorSuccess: NaN} validated")
	}
}

func TestEffectiveCapacity(t *testing.T) {
	tests := []struct {
		declared int
		ramp     float64
		want     float64
	}{
		{8, 0.1, 1}, // floor of one call
		{100, 0.1, 10},
		{100, 1, 100},
		{100, 0.55, 55},
		{1, 0.1, 1},
		{0, 0.1, 0},
		{0, 1, 0},
		{-3, 1, 0},
	}
	for _, tt := range tests {
		if got := EffectiveCapacity(tt.declared, tt.ramp); !near(got, tt.want, 1e-9) {
			t.Errorf("EffectiveCapacity(%d, %v) = %v, want %v", tt.declared, tt.ramp, got, tt.want)
		}
	}
}

func TestHealthValidate(t *testing.T) {
	mod := func(f func(*HealthConfig)) HealthConfig {
		c := DefaultHealthConfig()
		f(&c)
		return c
	}
	tests := []struct {
		name string
		cfg  HealthConfig
		ok   bool
	}{
		{"default", DefaultHealthConfig(), true},
		{"no failure prior", mod(func(c *HealthConfig) { c.PriorFailure = 0 }), true},
		{"window equals bucket", mod(func(c *HealthConfig) { c.Window = c.Bucket }), true},
		{"zero bucket", mod(func(c *HealthConfig) { c.Bucket = 0 }), false},
		{"negative bucket", mod(func(c *HealthConfig) { c.Bucket = -time.Hour }), false},
		{"window below bucket", mod(func(c *HealthConfig) { c.Window = c.Bucket - 1 }), false},
		{"zero success prior", mod(func(c *HealthConfig) { c.PriorSuccess = 0 }), false},
		{"negative failure prior", mod(func(c *HealthConfig) { c.PriorFailure = -1 }), false},
		{"zero online prior", mod(func(c *HealthConfig) { c.PriorOnline = 0 }), false},
	}
	for _, tt := range tests {
		if err := tt.cfg.Validate(); (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
	if n := DefaultHealthConfig().buckets(); n != 336 {
		t.Errorf("default window has %d buckets, want 336", n)
	}
}

func TestHealthNewcomer(t *testing.T) {
	cfg := DefaultHealthConfig()
	w := NewHealthWindow(cfg, t0)
	for _, at := range []time.Time{t0, t0.Add(-time.Hour), t0.Add(30 * time.Minute)} {
		online := at.Sub(t0)
		w := NewHealthWindow(cfg, t0)
		w.AddOnline(cfg, at, online) // online all the time since first seen
		if got := w.Score(cfg, at); !near(got, 0.9, 1e-12) {
			t.Errorf("newcomer score at %v = %v, want 0.9", at.Sub(t0), got)
		}
	}
	if got := w.Score(cfg, t0); got != 0.9 {
		t.Errorf("newcomer score = %v, want 0.9", got)
	}
}

// onlineSince feeds w an announcement-like online stream every step from
// from to to.
func onlineSince(cfg HealthConfig, w *HealthWindow, from, to time.Time, step time.Duration) {
	for at := from.Add(step); !at.After(to); at = at.Add(step) {
		w.AddOnline(cfg, at, step)
	}
}

func TestHealthDirections(t *testing.T) {
	cfg := DefaultHealthConfig()
	now := t0.Add(time.Hour)
	base := func() *HealthWindow {
		w := NewHealthWindow(cfg, t0)
		onlineSince(cfg, w, t0, now, time.Minute)
		return w
	}
	ref := base().Score(cfg, now)
	if !near(ref, 0.9, 1e-12) {
		t.Fatalf("fully online newcomer = %v, want 0.9", ref)
	}
	tests := []struct {
		e    Event
		n    uint32
		sign int // -1 lower, 0 same, +1 higher
	}{
		{EventSuccess, 1, +1},
		{EventSuccess, 100, +1},
		{EventProbeOK, 1, +1},
		{EventFailure, 1, -1},
		{EventProbeFail, 1, -1},
		{EventNeutral, 1, 0},
		{EventNeutral, 1 << 30, 0},
		{numEvents, 5, 0},    // unknown event: ignored
		{Event(200), 5, 0},   // unknown event: ignored
		{EventFailure, 0, 0}, // zero events
	}
	for _, tt := range tests {
		w := base()
		w.Record(cfg, now, tt.e, tt.n)
		got := w.Score(cfg, now)
		var sign int
		switch {
		case got > ref:
			sign = 1
		case got < ref:
			sign = -1
		}
		if sign != tt.sign {
			t.Errorf("%d x event %d: score %v vs %v, want direction %d", tt.n, tt.e, got, ref, tt.sign)
		}
	}

	// One failure after ten prior-weighted calls: 9/11.
	w := base()
	w.Record(cfg, now, EventFailure, 1)
	if got := w.Score(cfg, now); !near(got, 9.0/11, 1e-12) {
		t.Errorf("one failure: %v, want 9/11", got)
	}
	// Successes raise it towards 1 but never above.
	w = base()
	prev := ref
	for i := range 20 {
		w.Record(cfg, now, EventSuccess, 1<<i)
		got := w.Score(cfg, now)
		if got <= prev || got > 1 {
			t.Fatalf("after %d successes score %v (prev %v)", 1<<(i+1)-1, got, prev)
		}
		prev = got
	}
	if prev < 0.99999 {
		t.Errorf("a million successes score %v, want close to 1", prev)
	}
}

// randomHistory plays a random, time-ordered history into w and returns
// the time of its last event.
func randomHistory(rng *rand.Rand, cfg HealthConfig, w *HealthWindow, steps int) time.Time {
	at := w.FirstSeen
	for range steps {
		at = at.Add(time.Duration(rng.Int64N(int64(6 * time.Hour))))
		switch rng.IntN(3) {
		case 0:
			w.AddOnline(cfg, at, time.Duration(rng.Int64N(int64(2*time.Hour))))
		default:
			w.Record(cfg, at, Event(rng.IntN(int(numEvents))), uint32(rng.IntN(50)))
		}
	}
	return at
}

func cloneWindow(t *testing.T, w *HealthWindow) *HealthWindow {
	t.Helper()
	data, err := json.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	var c HealthWindow
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	return &c
}

// Adding neutral events, any number of them, at any time inside the window,
// never changes the score.
func TestHealthNeutralNeverCounts(t *testing.T) {
	cfg := DefaultHealthConfig()
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 2))
		w := NewHealthWindow(cfg, t0)
		last := randomHistory(rng, cfg, w, rng.IntN(300))
		now := last.Add(time.Duration(rng.Int64N(int64(3 * day))))
		before := w.Score(cfg, now)
		beforeCounts, beforeOnline := w.Totals(cfg, now)

		n := w
		for range rng.IntN(100) {
			// any time in (now-Window+Bucket, now], out of order (see
			// TestHealthStaleEventKeepsNewerBucket for the last bucket)
			at := now.Add(-time.Duration(rng.Int64N(int64(cfg.Window - cfg.Bucket))))
			n.Record(cfg, at, EventNeutral, rng.Uint32())
		}
		if after := n.Score(cfg, now); after != before {
			t.Fatalf("seed %d: neutral events moved the score %v -> %v", seed, before, after)
		}
		afterCounts, afterOnline := n.Totals(cfg, now)
		afterCounts[EventNeutral] = beforeCounts[EventNeutral]
		if afterCounts != beforeCounts || afterOnline != beforeOnline {
			t.Fatalf("seed %d: neutral events changed other totals", seed)
		}
	}
}

// An event stamped a window back (a late report, a wall clock stepped
// back) lands in the ring slot that now holds the current bucket.
func TestHealthStaleEventKeepsNewerBucket(t *testing.T) {
	cfg := DefaultHealthConfig()
	for _, back := range []time.Duration{cfg.Window - time.Minute, cfg.Window, 2 * cfg.Window} {
		w := NewHealthWindow(cfg, t0)
		now := t0.Add(20*day + 30*time.Minute)
		w.Record(cfg, now, EventFailure, 5)
		before := w.Score(cfg, now)
		w.Record(cfg, now.Add(-back), EventNeutral, 1) // same slot, older bucket
		if after := w.Score(cfg, now); after != before {
			t.Errorf("a neutral event %v back moved the score %v -> %v", back, before, after)
		}
	}
}

func TestHealthEventsAgeOut(t *testing.T) {
	cfg := DefaultHealthConfig()
	// The same online history, with and without failures at t0.
	build := func(failures uint32, until time.Duration) *HealthWindow {
		w := NewHealthWindow(cfg, t0)
		w.Record(cfg, t0, EventFailure, failures)
		onlineSince(cfg, w, t0, t0.Add(until), 10*time.Minute)
		return w
	}
	for _, tt := range []struct {
		at    time.Duration
		count bool
	}{
		{day, true},
		{13 * day, true},
		{14*day - time.Nanosecond, true},
		{14 * day, false},
		{15 * day, false},
		{40 * day, false},
	} {
		clean, dirty := build(0, tt.at), build(50, tt.at)
		a, b := clean.Score(cfg, t0.Add(tt.at)), dirty.Score(cfg, t0.Add(tt.at))
		if tt.count && b >= a {
			t.Errorf("at %v the failures at t0 should still count: %v vs %v", tt.at, b, a)
		}
		if !tt.count && a != b {
			t.Errorf("at %v the failures at t0 still count: %v vs %v", tt.at, b, a)
		}
	}
	// Without any further writes, the bucket just falls out of Totals.
	w := NewHealthWindow(cfg, t0)
	w.Record(cfg, t0, EventFailure, 7)
	for _, tt := range []struct {
		at   time.Duration
		want uint64
	}{
		{-time.Nanosecond, 0}, // a bucket from the future is not counted
		{0, 7},
		{14*day - time.Nanosecond, 7},
		{14 * day, 0},
		{15 * day, 0},
		{28 * day, 0}, // the same ring slot, not rewritten
	} {
		if c, _ := w.Totals(cfg, t0.Add(tt.at)); c[EventFailure] != tt.want {
			t.Errorf("Totals at %v: %d failures, want %d", tt.at, c[EventFailure], tt.want)
		}
	}
}

func TestHealthRingReuse(t *testing.T) {
	cfg := DefaultHealthConfig()
	w := NewHealthWindow(cfg, t0)
	w.Record(cfg, t0, EventFailure, 9)
	w.AddOnline(cfg, t0, 30*time.Minute)
	w.Record(cfg, t0.Add(time.Hour), EventSuccess, 4)

	// Jump by exactly the window: the same slot as t0, a new bucket.
	later := t0.Add(cfg.Window)
	w.Record(cfg, later, EventSuccess, 2)
	c, online := w.Totals(cfg, later)
	if c[EventFailure] != 0 || c[EventSuccess] != 2+4 || online != 0 {
		t.Errorf("after jumping one window: %v, online %v; want the old bucket gone", c, online)
	}
	// Jump far beyond the window: only the new bucket is left.
	far := t0.Add(100*day + 30*time.Minute)
	w.Record(cfg, far, EventProbeOK, 3)
	c, online = w.Totals(cfg, far)
	if c != [numEvents]uint64{EventProbeOK: 3} || online != 0 {
		t.Errorf("after jumping 100 days: %v, online %v", c, online)
	}
	slot := w.Buckets[int((far.UnixNano()/int64(cfg.Bucket))%int64(len(w.Buckets)))]
	if slot.Start != far.UnixNano()/int64(cfg.Bucket) || slot.Counts[EventProbeOK] != 3 {
		t.Errorf("slot %+v", slot)
	}
	// Every slot eventually rewritten: a long steady stream keeps exactly
	// one window of data.
	w = NewHealthWindow(cfg, t0)
	for h := range 3 * 336 {
		w.Record(cfg, t0.Add(time.Duration(h)*time.Hour), EventSuccess, 1)
	}
	now := t0.Add(3*336*time.Hour - time.Nanosecond)
	if c, _ := w.Totals(cfg, now); c[EventSuccess] != 336 {
		t.Errorf("steady stream: %d successes in the window, want 336", c[EventSuccess])
	}
}

func TestHealthAvailability(t *testing.T) {
	cfg := DefaultHealthConfig()

	// Online the whole observed time: availability 1, score = reliability.
	for _, age := range []time.Duration{time.Minute, time.Hour, 3 * day, 13 * day} {
		w := NewHealthWindow(cfg, t0)
		onlineSince(cfg, w, t0, t0.Add(age), 3*time.Second)
		if got := w.Score(cfg, t0.Add(age)); !near(got, 0.9, 1e-9) {
			t.Errorf("online all of %v: score %v, want 0.9", age, got)
		}
	}

	// Online half the time over two days: about half of its reliability.
	w := NewHealthWindow(cfg, t0)
	onlineSince(cfg, w, t0, t0.Add(day), 3*time.Second)
	now := t0.Add(2 * day)
	got := w.Score(cfg, now)
	want := 0.9 * float64(day+time.Hour) / float64(2*day+time.Hour)
	if !near(got, want, 1e-9) || !near(got, 0.45, 0.01) {
		t.Errorf("online half of two days: %v, want %v (about 0.45)", got, want)
	}
	// Never online after a long time: close to zero but positive.
	w = NewHealthWindow(cfg, t0)
	if got := w.Score(cfg, t0.Add(30*day)); got <= 0 || got > 0.9/300 {
		t.Errorf("never online for 30 days: %v", got)
	}
	// More online than observed cannot raise availability above 1.
	w = NewHealthWindow(cfg, t0)
	w.AddOnline(cfg, t0.Add(time.Hour), 1000*time.Hour)
	w.AddOnline(cfg, t0.Add(time.Hour), -time.Hour) // ignored
	if got := w.Score(cfg, t0.Add(time.Hour)); !near(got, 0.9, 1e-12) {
		t.Errorf("over-counted online: %v, want 0.9", got)
	}
}

func TestHealthAvailabilityOldInstance(t *testing.T) {
	cfg := DefaultHealthConfig()
	w := NewHealthWindow(cfg, t0)
	now := t0.Add(20 * day)
	onlineSince(cfg, w, t0, now, time.Minute)
	if got := w.Score(cfg, now); !near(got, 0.9, 1e-9) {
		t.Errorf("online all of 20 days: score %v, want 0.9", got)
	}
}

func TestHealthBeforeEpoch(t *testing.T) {
	cfg := DefaultHealthConfig()
	w := NewHealthWindow(cfg, t0)
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("Record at the zero time panicked: %v", r)
		}
	}()
	w.Record(cfg, time.Time{}, EventFailure, 1)
}

func TestHealthScoreBounds(t *testing.T) {
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 3))
		cfg := DefaultHealthConfig()
		if seed%2 == 1 { // a random valid config too
			cfg.Bucket = time.Duration(1 + rng.Int64N(int64(3*time.Hour)))
			cfg.Window = cfg.Bucket * time.Duration(1+rng.IntN(400))
			cfg.PriorSuccess = 0.01 + 20*rng.Float64()
			cfg.PriorFailure = 20 * rng.Float64()
			cfg.PriorOnline = time.Duration(1 + rng.Int64N(int64(2*time.Hour)))
			if err := cfg.Validate(); err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
		}
		first := t0.Add(time.Duration(rng.Int64N(int64(10 * day))))
		w := NewHealthWindow(cfg, first)
		at := first.Add(-time.Duration(rng.Int64N(int64(day)))) // clock skew: events before first seen
		for range rng.IntN(400) {
			at = at.Add(time.Duration(rng.Int64N(int64(12 * time.Hour))))
			switch rng.IntN(4) {
			case 0:
				w.AddOnline(cfg, at, time.Duration(rng.Int64N(int64(24*time.Hour))))
			case 1:
				w.Record(cfg, at, EventFailure, rng.Uint32N(1<<20))
			default:
				w.Record(cfg, at, Event(rng.IntN(int(numEvents)+1)), rng.Uint32N(1000))
			}
			now := at.Add(time.Duration(rng.Int64N(int64(30*day))) - 2*day)
			if s := w.Score(cfg, now); !(s > 0 && s <= 1) {
				t.Fatalf("seed %d: score %v at %v outside (0,1]", seed, s, now.Sub(first))
			}
		}
	}
}

// Failures never raise the score and successes never lower it, whatever
// the history.
func TestHealthMonotone(t *testing.T) {
	cfg := DefaultHealthConfig()
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 4))
		w := NewHealthWindow(cfg, t0)
		now := randomHistory(rng, cfg, w, rng.IntN(200))
		ref := w.Score(cfg, now)
		bad, good := cloneWindow(t, w), cloneWindow(t, w)
		bad.Record(cfg, now, EventFailure, 1+rng.Uint32N(10))
		good.Record(cfg, now, EventProbeOK, 1+rng.Uint32N(10))
		if b, g := bad.Score(cfg, now), good.Score(cfg, now); b >= ref || g <= ref {
			t.Fatalf("seed %d: ref %v, after failures %v, after probes %v", seed, ref, b, g)
		}
	}
}

func TestHealthJSONRoundTrip(t *testing.T) {
	cfg := DefaultHealthConfig()
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 5))
		first := time.Unix(1_700_000_000+rng.Int64N(1e7), rng.Int64N(1e9)).In(time.FixedZone("X", 3600))
		w := NewHealthWindow(cfg, first)
		last := randomHistory(rng, cfg, w, rng.IntN(300))
		c := cloneWindow(t, w)
		if !c.FirstSeen.Equal(w.FirstSeen) {
			t.Fatalf("seed %d: first seen %v -> %v", seed, w.FirstSeen, c.FirstSeen)
		}
		for _, d := range []time.Duration{0, time.Hour, 5 * day, 20 * day} {
			now := last.Add(d)
			if a, b := w.Score(cfg, now), c.Score(cfg, now); a != b {
				t.Fatalf("seed %d: score at +%v %v -> %v after a round trip", seed, d, a, b)
			}
		}
		// Both keep evolving the same way.
		at := last.Add(2 * time.Hour)
		for _, x := range []*HealthWindow{w, c} {
			x.Record(cfg, at, EventFailure, 3)
			x.AddOnline(cfg, at, time.Hour)
		}
		if a, b := w.Score(cfg, at), c.Score(cfg, at); a != b {
			t.Fatalf("seed %d: restored window diverged %v vs %v", seed, a, b)
		}
	}
}

// A window restored under another bucket count starts over instead of
// indexing out of range.
func TestHealthRestoredUnderOtherConfig(t *testing.T) {
	cfg := DefaultHealthConfig()
	w := NewHealthWindow(cfg, t0)
	w.Record(cfg, t0, EventFailure, 3)
	small := cfg
	small.Window = 24 * time.Hour
	w.Record(small, t0.Add(time.Hour), EventSuccess, 1)
	if len(w.Buckets) != 24 {
		t.Fatalf("%d buckets, want 24", len(w.Buckets))
	}
	if c, _ := w.Totals(small, t0.Add(time.Hour)); c != [numEvents]uint64{EventSuccess: 1} {
		t.Errorf("totals %v", c)
	}
	var empty HealthWindow // e.g. restored without buckets
	empty.FirstSeen = t0
	if s := empty.Score(cfg, t0); s != 0.9 {
		t.Errorf("empty window score %v", s)
	}
	empty.Record(cfg, t0, EventFailure, 1)
	if c, _ := empty.Totals(cfg, t0); c[EventFailure] != 1 {
		t.Errorf("empty window after a record: %v", c)
	}
}

func TestSystemClock(t *testing.T) {
	var c Clock = SystemClock{}
	if d := time.Since(c.Now()); d < 0 || d > time.Minute {
		t.Errorf("SystemClock off by %v", d)
	}
}
