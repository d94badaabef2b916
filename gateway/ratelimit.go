package gateway

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// keyLimits is a requests-per-minute limit per API key: a token bucket per
// key that refills at rpm/60 a second and holds up to rpm/6 calls (ten
// seconds' worth, at least one), so short bursts pass and sustained floods
// do not. Buckets idle for two minutes are full again and are dropped, so
// the map holds only keys seen lately.
type keyLimits struct {
	rpm   int
	burst int

	mu      sync.Mutex
	buckets map[string]*keyBucket
	swept   time.Time
}

type keyBucket struct {
	lim  *rate.Limiter
	last time.Time
}

// idleBucket is how long an unused bucket is kept; by then it is full.
const idleBucket = 2 * time.Minute

// newKeyLimits returns a limiter of rpm calls a minute per key; rpm <= 0
// returns nil, which allows everything.
func newKeyLimits(rpm int) *keyLimits {
	if rpm <= 0 {
		return nil
	}
	return &keyLimits{rpm: rpm, burst: max(1, rpm/6), buckets: map[string]*keyBucket{}}
}

// allow takes one call from key's bucket at now. When it is empty, wait is
// how long until the next call would pass. remaining is what is left.
func (k *keyLimits) allow(key string, now time.Time) (ok bool, remaining int, wait time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if now.Sub(k.swept) > idleBucket {
		for key, b := range k.buckets {
			if now.Sub(b.last) > idleBucket {
				delete(k.buckets, key)
			}
		}
		k.swept = now
	}
	b := k.buckets[key]
	if b == nil {
		b = &keyBucket{lim: rate.NewLimiter(rate.Limit(float64(k.rpm)/60), k.burst)}
		k.buckets[key] = b
	}
	b.last = now
	r := b.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, 0, d
	}
	return true, int(b.lim.TokensAt(now)), 0
}

// check applies the limit to one call, setting OpenAI's x-ratelimit
// headers. It reports false after writing a 429 when key is over its limit.
func (k *keyLimits) check(w http.ResponseWriter, key string) bool {
	if k == nil {
		return true
	}
	ok, remaining, wait := k.allow(key, time.Now())
	h := w.Header()
	h.Set("x-ratelimit-limit-requests", strconv.Itoa(k.rpm))
	h.Set("x-ratelimit-remaining-requests", strconv.Itoa(remaining))
	if ok {
		return true
	}
	secs := int(wait/time.Second) + 1
	h.Set("x-ratelimit-reset-requests", wait.Round(time.Millisecond).String())
	h.Set("Retry-After", strconv.Itoa(secs))
	fail(w, http.StatusTooManyRequests, "requests", "", "rate_limit_exceeded",
		"rate limit reached: this API key may make "+strconv.Itoa(k.rpm)+" requests a minute on this gateway; retry in "+strconv.Itoa(secs)+"s")
	return false
}
