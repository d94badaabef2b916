package economy

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// Tier is an instance's trust tier, derived from its age and its score over
// the rolling health window (SPEC §5). Higher tiers unlock higher bounty
// multipliers.
type Tier int

// The trust tiers, lowest first. They index TrustConfig.MaxBounty.
const (
	// TierNew is an instance too young or too unreliable to earn bounties
	// under the default terms.
	TierNew Tier = iota
	// TierEstablished is an instance with a few days of good service.
	TierEstablished
	// TierTrusted is an instance with a full health window of near-perfect
	// service.
	TierTrusted
)

// numTiers is the number of valid tiers.
const numTiers = 3

var tierNames = [numTiers]string{"new", "established", "trusted"}

// String returns the tier's name ("new", "established", "trusted"), the key
// used in Bounty.Multipliers, or "Tier(n)" for an unknown tier.
func (t Tier) String() string {
	if t.valid() {
		return tierNames[t]
	}
	return "Tier(" + strconv.Itoa(int(t)) + ")"
}

func (t Tier) valid() bool { return t >= 0 && t < numTiers }

// TrustConfig sets the thresholds of the trust tiers and the bounty each
// tier can earn.
type TrustConfig struct {
	// EstablishedAge is the minimum age of an established instance.
	EstablishedAge time.Duration
	// TrustedAge is the minimum age of a trusted instance.
	TrustedAge time.Duration
	// EstablishedScore is the minimum health score, in [0, 1], of an
	// established instance.
	EstablishedScore float64
	// TrustedScore is the minimum health score, in [0, 1], of a trusted
	// instance.
	TrustedScore float64
	// MaxBounty is the bounty multiplier, >= 1, each tier earns on a fully
	// under-supplied model, indexed by Tier.
	MaxBounty [numTiers]float64
}

// DefaultTrustConfig returns the default tiers: new below 3 days or a score
// of 0.8; established from 3 days and 0.8; trusted from 14 days and 0.95.
func DefaultTrustConfig() TrustConfig {
	return TrustConfig{
		EstablishedAge:   3 * 24 * time.Hour,  // outlasts the 72 h anti-flap decay: a fresh identity cannot farm bounties at once
		TrustedAge:       14 * 24 * time.Hour, // one full rolling health window (SPEC §5): the score rests on complete evidence
		EstablishedScore: 0.8,                 // fails at most one call in five: usable, still worth paying to attract
		TrustedScore:     0.95,                // fails at most one call in twenty: worth the top multiplier
		MaxBounty: [numTiers]float64{
			1.0, // new: no bounty, so throwaway identities earn nothing extra
			1.5, // established: the 1.5x of SPEC §5
			2.0, // trusted: double pay; times the 0.5 anti-flap cut it is 1x, so hopping to it gains nothing at first
		},
	}
}

// Validate reports whether the ages are ordered and non-negative, the scores
// ordered and in [0, 1], and the bounties finite, >= 1 and non-decreasing by
// tier.
func (c TrustConfig) Validate() error {
	if c.EstablishedAge < 0 || c.TrustedAge < c.EstablishedAge {
		return fmt.Errorf("%w: want 0 <= EstablishedAge (%v) <= TrustedAge (%v)",
			ErrBadConfig, c.EstablishedAge, c.TrustedAge)
	}
	if !(c.EstablishedScore >= 0 && c.EstablishedScore <= c.TrustedScore && c.TrustedScore <= 1) {
		return fmt.Errorf("%w: want 0 <= EstablishedScore (%v) <= TrustedScore (%v) <= 1",
			ErrBadConfig, c.EstablishedScore, c.TrustedScore)
	}
	prev := 1.0
	for t, b := range c.MaxBounty {
		if !(b >= prev) || math.IsInf(b, 0) || b > maxBountyMultiplier {
			return fmt.Errorf("%w: MaxBounty[%v] = %v: want finite, >= 1 and >= the tier below",
				ErrBadConfig, Tier(t), b)
		}
		prev = b
	}
	return nil
}

// Tier returns the tier of an instance of the given age whose health score
// over the rolling window is score. Both thresholds of a tier must be met; a
// NaN score is TierNew.
func (c TrustConfig) Tier(age time.Duration, score float64) Tier {
	switch {
	case age >= c.TrustedAge && score >= c.TrustedScore:
		return TierTrusted
	case age >= c.EstablishedAge && score >= c.EstablishedScore:
		return TierEstablished
	default:
		return TierNew
	}
}
