package economy

import (
	"fmt"
	"math"
	"time"
)

// FlapConfig configures the anti-flapping payout cut (SPEC §5): an instance
// that switches the model it serves is paid less for a while, so chasing
// whichever model has a bounty right now does not pay.
type FlapConfig struct {
	// Cut is the payout factor right after a switch, in [0, 1].
	Cut float64
	// Decay is how long the cut takes to fade linearly to nothing.
	Decay time.Duration
}

// DefaultFlapConfig returns the anti-flapping terms of SPEC §5.
func DefaultFlapConfig() FlapConfig {
	return FlapConfig{
		Cut:   0.5,            // half pay right after a switch: even the top 2x bounty then only matches staying put
		Decay: 72 * time.Hour, // three days: longer than a daily demand cycle, so hopping to follow it never pays
	}
}

// Validate reports whether Cut is in [0, 1] and Decay is not negative.
func (c FlapConfig) Validate() error {
	if !(c.Cut >= 0 && c.Cut <= 1) {
		return fmt.Errorf("%w: flap Cut %v outside [0, 1]", ErrBadConfig, c.Cut)
	}
	if c.Decay < 0 {
		return fmt.Errorf("%w: flap Decay %v is negative", ErrBadConfig, c.Decay)
	}
	return nil
}

// FlapFactor is the payout factor, in [0, 1], for an instance that last
// switched the model it serves at switchedAt (the zero time means never):
// Cut right after the switch, rising linearly to 1 at switchedAt+Decay, and
// 1 if it never switched. A now before switchedAt (clock skew) counts as right
// after the switch. Cut is clamped to [0, 1] (NaN counts as 1, no cut); a Decay
// of zero or less means the cut has no effect.
func (c FlapConfig) FlapFactor(switchedAt, now time.Time) float64 {
	if switchedAt.IsZero() || c.Decay <= 0 || math.IsNaN(c.Cut) {
		return 1
	}
	cut := min(max(c.Cut, 0), 1)
	elapsed := now.Sub(switchedAt)
	switch {
	case elapsed <= 0:
		return cut
	case elapsed >= c.Decay:
		return 1
	}
	f := cut + (1-cut)*(float64(elapsed)/float64(c.Decay))
	return min(f, 1)
}
