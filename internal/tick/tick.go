// Package tick runs periodic work until a context ends.
package tick

import (
	"context"
	"time"
)

// Every calls f with the tick's time every d until ctx ends.
func Every(ctx context.Context, d time.Duration, f func(now time.Time)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			f(now)
		}
	}
}
