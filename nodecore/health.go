package nodecore

import (
	"errors"
	"math"
	"time"
)

// Event is something that happened to an instance, counted in its health window.
type Event uint8

// Events.
const (
	EventSuccess   Event = iota // a call it served was billed
	EventFailure                // a gateway saw it fail (5xx, timeout, broken stream, refused)
	EventNeutral                // a consumer-caused error: counted, never held against it
	EventProbeOK                // the settlement peer's probe was answered
	EventProbeFail              // the settlement peer's probe failed
	numEvents
)

// HealthConfig shapes the rolling health window.
type HealthConfig struct {
	Window       time.Duration // how far back the window reaches
	Bucket       time.Duration // bucket width
	PriorSuccess float64       // imaginary successes every instance starts with
	PriorFailure float64       // imaginary failures every instance starts with
	PriorOnline  time.Duration // imaginary time online (and observed) every instance starts with
}

// DefaultHealthConfig is SPEC §5's window.
func DefaultHealthConfig() HealthConfig {
	return HealthConfig{
		Window:       14 * 24 * time.Hour, // SPEC: 14 days
		Bucket:       time.Hour,           // hourly: 336 buckets, fine enough to forget a bad afternoon
		PriorSuccess: 9,                   // a newcomer starts at 0.9 reliability ...
		PriorFailure: 1,                   // ... worth 10 calls, so its first failure is no disaster
		PriorOnline:  time.Hour,           // and fully available, worth an hour online
	}
}

// Validate reports a window that cannot work.
func (c HealthConfig) Validate() error {
	// Written so NaN fails every check.
	if c.Bucket <= 0 || c.Window < c.Bucket || !(c.PriorSuccess > 0) || !(c.PriorFailure >= 0) || math.IsInf(c.PriorSuccess+c.PriorFailure, 0) || c.PriorOnline <= 0 {
		return errors.New("nodecore: health window needs bucket > 0, window >= bucket and positive priors")
	}
	return nil
}

// buckets is how many buckets the window holds.
func (c HealthConfig) buckets() int { return int((c.Window + c.Bucket - 1) / c.Bucket) }

// HealthBucket is one bucket of the window.
type HealthBucket struct {
	Start  int64             `json:"start"` // bucket index since the epoch (unix time / Bucket)
	Counts [numEvents]uint32 `json:"counts"`
	Online time.Duration     `json:"online"`
}

// HealthWindow is one instance's rolling window: counts of events and time
// online per bucket, for the last Window. Its zero value is not usable; use
// NewHealthWindow. It is not safe for concurrent use.
type HealthWindow struct {
	FirstSeen time.Time      `json:"first_seen"`
	Buckets   []HealthBucket `json:"buckets"` // ring, indexed by Start mod len
}

// NewHealthWindow starts a window for an instance first seen at firstSeen.
func NewHealthWindow(cfg HealthConfig, firstSeen time.Time) *HealthWindow {
	return &HealthWindow{FirstSeen: firstSeen, Buckets: make([]HealthBucket, cfg.buckets())}
}

// bucket returns the ring slot for at, or nil when the slot already holds a
// newer bucket (an event that arrived too late to count).
func (w *HealthWindow) bucket(cfg HealthConfig, at time.Time) *HealthBucket {
	if len(w.Buckets) != cfg.buckets() { // restored under another config
		w.Buckets = make([]HealthBucket, cfg.buckets())
	}
	idx := floorDiv(at.UnixNano(), int64(cfg.Bucket))
	n := int64(len(w.Buckets))
	b := &w.Buckets[int(((idx%n)+n)%n)]
	switch {
	case b.Start > idx:
		return nil
	case b.Start < idx:
		*b = HealthBucket{Start: idx}
	}
	return b
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// Record counts n events at time at.
func (w *HealthWindow) Record(cfg HealthConfig, at time.Time, e Event, n uint32) {
	if e >= numEvents {
		return
	}
	if b := w.bucket(cfg, at); b != nil {
		b.Counts[e] += n
	}
}

// AddOnline counts d of time online ending at at.
func (w *HealthWindow) AddOnline(cfg HealthConfig, at time.Time, d time.Duration) {
	if d <= 0 {
		return
	}
	if b := w.bucket(cfg, at); b != nil {
		b.Online += d
	}
}

// Totals sums the window's buckets that are still inside it at now.
func (w *HealthWindow) Totals(cfg HealthConfig, now time.Time) (counts [numEvents]uint64, online time.Duration) {
	cur := floorDiv(now.UnixNano(), int64(cfg.Bucket))
	oldest := cur - int64(len(w.Buckets)) + 1
	for _, b := range w.Buckets {
		if b.Start < oldest || b.Start > cur {
			continue
		}
		for i, c := range b.Counts {
			counts[i] += uint64(c)
		}
		online += b.Online
	}
	return counts, online
}

// Score is the instance's health in (0,1]: reliability (billed calls and
// answered probes against failures, with a prior) times availability (time
// online over time observed within the window, with a prior). Neutral
// events never lower it. A newcomer scores PriorSuccess/(PriorSuccess+PriorFailure).
func (w *HealthWindow) Score(cfg HealthConfig, now time.Time) float64 {
	counts, online := w.Totals(cfg, now)
	good := float64(counts[EventSuccess]+counts[EventProbeOK]) + cfg.PriorSuccess
	bad := float64(counts[EventFailure]+counts[EventProbeFail]) + cfg.PriorFailure
	reliability := good / (good + bad)
	// Observed time is what the buckets still in the window can cover.
	oldest := floorDiv(now.UnixNano(), int64(cfg.Bucket)) - int64(len(w.Buckets)) + 1
	covered := now.Sub(time.Unix(0, oldest*int64(cfg.Bucket)))
	observed := min(max(now.Sub(w.FirstSeen), 0), covered)
	availability := min(float64(online+cfg.PriorOnline)/float64(observed+cfg.PriorOnline), 1)
	return reliability * availability
}
