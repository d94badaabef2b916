package provider

import "time"

// announceBurst is how many announcements in a row a quiet node may send
// one announce gap apart before the gossip budget paces it: a node that
// fills up and empties again says so at once.
const announceBurst = 3

// pacer spaces a node's announcements: never closer than gap, and on
// average no closer than every (a token bucket of announceBurst refilled
// at one per every).
type pacer struct {
	tokens float64
	last   time.Time // the last announcement
	filled time.Time // when tokens were last refilled
}

// wait is how long to wait at now before the next announcement may go.
func (p *pacer) wait(now time.Time, gap, every time.Duration) time.Duration {
	p.refill(now, every)
	d := gap - now.Sub(p.last)
	if p.tokens < 1 {
		d = max(d, time.Duration((1-p.tokens)*float64(every)))
	}
	return max(d, 0)
}

// sent records an announcement at now.
func (p *pacer) sent(now time.Time, every time.Duration) {
	p.refill(now, every)
	p.tokens = max(p.tokens-1, 0)
	p.last = now
}

func (p *pacer) refill(now time.Time, every time.Duration) {
	if p.filled.IsZero() {
		p.tokens, p.filled = announceBurst, now
		return
	}
	if every > 0 {
		p.tokens = min(announceBurst, p.tokens+now.Sub(p.filled).Seconds()/every.Seconds())
	}
	p.filled = now
}
