package settlement

import (
	"sync"
	"time"
)

// rateLimiter allows at most limit events per key within window (a sliding
// log; the keys are client addresses, so it stays small).
type rateLimiter struct {
	limit  int
	window time.Duration
	mu     sync.Mutex
	events map[string][]time.Time
}

func newRateLimiter(limit int, window time.Duration) *rateLimiter {
	return &rateLimiter{limit: limit, window: window, events: map[string][]time.Time{}}
}

// allow records an event for key at now and reports whether it is within the limit.
func (r *rateLimiter) allow(key string, now time.Time) bool {
	if r.limit <= 0 {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	kept := r.events[key][:0]
	for _, t := range r.events[key] {
		if now.Sub(t) < r.window {
			kept = append(kept, t)
		}
	}
	if len(kept) >= r.limit {
		r.events[key] = kept
		return false
	}
	r.events[key] = append(kept, now)
	return true
}
