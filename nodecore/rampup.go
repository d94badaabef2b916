package nodecore

import (
	"errors"
	"time"
)

// FloorTokPerSec is the sustained generation rate below which an instance
// is not a routing candidate (SPEC §4). Above it every rate is equal.
const FloorTokPerSec = 5.0

// RampConfig is how a new instance's effective capacity grows.
type RampConfig struct {
	Start  float64       // fraction of declared capacity on the first day
	Period time.Duration // time to reach full capacity
}

// DefaultRampConfig is SPEC §4's ramp-up.
func DefaultRampConfig() RampConfig {
	return RampConfig{
		Start:  0.10,               // a newcomer takes 10% of what it declares ...
		Period: 7 * 24 * time.Hour, // ... growing linearly to 100% over 7 days
	}
}

// Validate reports a ramp that cannot work.
func (c RampConfig) Validate() error {
	if !(c.Start > 0 && c.Start <= 1) || c.Period < 0 { // NaN fails too
		return errors.New("nodecore: ramp start must be in (0,1] and its period >= 0")
	}
	return nil
}

// Ramp is the fraction of its declared capacity an instance first seen at
// firstSeen may use at now: Start, growing linearly to 1 over Period.
func (c RampConfig) Ramp(firstSeen, now time.Time) float64 {
	age := now.Sub(firstSeen)
	if c.Period <= 0 || age >= c.Period {
		return 1
	}
	if age <= 0 {
		return c.Start
	}
	return c.Start + (1-c.Start)*float64(age)/float64(c.Period)
}

// EffectiveCapacity is declared capacity scaled by ramp, never below one
// call, so that a newcomer can earn its first reputation.
func EffectiveCapacity(declared int, ramp float64) float64 {
	if declared <= 0 {
		return 0
	}
	return max(float64(declared)*ramp, 1)
}
