package provider

import (
	"testing"
	"time"
)

// TestPacerKeepsTheBudget: a node whose load changes all the time
// announces on average no more often than its pace, never closer than the
// gap, and a quiet node's first changes go out at once.
func TestPacerKeepsTheBudget(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	for _, c := range []struct{ gap, every time.Duration }{
		{time.Second, time.Second},
		{time.Second, 37500 * time.Millisecond},
	} {
		var p pacer
		now := start
		p.sent(now, c.every)
		sent, closest := 1, time.Hour
		last := now
		// Changes arrive every 100 ms for an hour; each waits its turn.
		for now.Sub(start) < time.Hour {
			now = now.Add(100 * time.Millisecond)
			if w := p.wait(now, c.gap, c.every); w > 0 {
				now = now.Add(w)
			}
			p.sent(now, c.every)
			sent++
			closest = min(closest, now.Sub(last))
			last = now
		}
		if closest < c.gap {
			t.Errorf("gap %s every %s: two announcements %s apart", c.gap, c.every, closest)
		}
		most := int(time.Hour/c.every) + announceBurst + 1
		if sent > most {
			t.Errorf("gap %s every %s: %d announcements in an hour, want at most %d", c.gap, c.every, sent, most)
		}
		if sent < most-announceBurst-2 {
			t.Errorf("gap %s every %s: only %d announcements in an hour of changes, want about %d", c.gap, c.every, sent, most)
		}
	}
	// A quiet node: after a long silence, announceBurst changes go out a gap apart.
	var p pacer
	now := start
	p.sent(now, time.Minute)
	now = now.Add(10 * time.Minute)
	for i := range announceBurst {
		if w := p.wait(now, time.Second, time.Minute); w > 0 {
			t.Fatalf("change %d after a quiet spell waits %s", i, w)
		}
		p.sent(now, time.Minute)
		now = now.Add(time.Second)
	}
	if w := p.wait(now, time.Second, time.Minute); w < 30*time.Second {
		t.Errorf("past the burst a change waits %s, want most of a pace (1m)", w)
	}
}
