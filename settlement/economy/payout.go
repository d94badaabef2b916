package economy

import (
	"fmt"
	"math"
	"math/bits"
)

// ppm is 1.0 in parts per million, the fixed-point unit the float payout
// multipliers are converted to before they touch money.
const ppm = 1_000_000

// maxBountyMultiplier caps Modifiers.Bounty so its ppm form fits in int64
// with room to spare. No sane configuration comes near it.
const maxBountyMultiplier = 1_000_000

// Terms are the platform-wide payout terms of a paid call (SPEC §5: the same
// terms for every account).
type Terms struct {
	// ProviderBps is the provider's share of the consumer's payment, in basis
	// points; the platform keeps the rest.
	ProviderBps int64
	// PoolBps is the share of the platform's nominal cut (cost minus the
	// provider's base share) moved into the bounty pool on every call, in
	// basis points of that cut.
	PoolBps int64
}

// DefaultTerms returns the terms of SPEC §5.
func DefaultTerms() Terms {
	return Terms{
		ProviderBps: DefaultProviderBps, // 80% to the provider, 20% to the platform (SPEC §5)
		PoolBps:     2500,               // a quarter of the platform's 20% (5% of each call) funds bounties; the platform keeps 15%
	}
}

// Validate reports whether both shares are within [0, 10000] basis points.
func (t Terms) Validate() error {
	if t.ProviderBps < 0 || t.ProviderBps > bpsDenominator {
		return fmt.Errorf("%w: ProviderBps %d outside [0, %d]", ErrBadConfig, t.ProviderBps, bpsDenominator)
	}
	if t.PoolBps < 0 || t.PoolBps > bpsDenominator {
		return fmt.Errorf("%w: PoolBps %d outside [0, %d]", ErrBadConfig, t.PoolBps, bpsDenominator)
	}
	return nil
}

// Modifiers are the per-call payout multipliers on the provider's share.
// The zero value is not neutral; use NoModifiers for "no bounty, no cut".
type Modifiers struct {
	// Bounty is the payout multiplier from an active bounty on the model,
	// >= 1 (1 = none). The extra is paid from the bounty pool, never by the
	// consumer. Values below 1 or NaN count as 1.
	Bounty float64
	// Flap is the anti-flapping factor in (0, 1] (1 = none), usually
	// FlapConfig.FlapFactor. Values are clamped to [0, 1]; NaN counts as 1.
	Flap float64
}

// NoModifiers returns the neutral modifiers: no bounty, no anti-flap cut.
func NoModifiers() Modifiers { return Modifiers{Bounty: 1, Flap: 1} }

// Legs are the transfers of one paid call, in µcr. Every leg is >= 0, and
//
//	Consumer == ToProvider + ToPlatform == cost
//
// The provider receives ToProvider + PoolToProvider; the platform nets
// ToPlatform - PlatformToPool; the bounty pool changes by
// PlatformToPool - PoolToProvider and never goes below zero.
type Legs struct {
	// Consumer is what the consumer pays: always exactly the call's cost.
	Consumer int64
	// ToProvider is the consumer -> provider transfer.
	ToProvider int64
	// ToPlatform is the consumer -> platform transfer; it includes the
	// rounding remainder and any anti-flap cut.
	ToPlatform int64
	// PlatformToPool is the platform -> bounty pool transfer that funds
	// bounties.
	PlatformToPool int64
	// PoolToProvider is the bounty pool -> provider transfer: the bounty
	// bonus.
	PoolToProvider int64
}

// ComputeLegs splits cost (µcr) under terms t and modifiers m. poolBalance is
// the bounty pool's balance before this call; the bonus is capped by it plus
// this call's funding, so the pool never goes negative. The rules are
//
//	base           = floor(cost * ProviderBps / 10000)
//	ToProvider     = floor(base * Flap)              // the anti-flap cut stays with the platform
//	ToPlatform     = cost - ToProvider               // so Consumer == ToProvider + ToPlatform == cost
//	PlatformToPool = floor((cost - base) * PoolBps / 10000)  // from the platform's nominal cut only
//	PoolToProvider = min(floor(ToProvider * (Bounty - 1)), poolBalance + PlatformToPool)
//
// Money is integer math only. Flap and Bounty are first rounded to the
// nearest part per million; each product with money is then computed exactly
// in 128 bits and floored, so every rounding remainder of the provider's
// share stays with the platform (or, for the bonus, in the pool). With
// Flap = Bounty = 1 the legs equal SplitCost(cost, ProviderBps) with only the
// pool funding added.
//
// Out-of-range inputs are clamped, never rejected: a negative cost or pool
// balance counts as 0 (a refund is not a paid call), basis points are clamped
// to [0, 10000], and the modifiers as documented on Modifiers.
func ComputeLegs(cost int64, t Terms, m Modifiers, poolBalance int64) Legs {
	cost = max(cost, 0)
	providerBps := min(max(t.ProviderBps, 0), bpsDenominator)
	poolBps := min(max(t.PoolBps, 0), bpsDenominator)

	base := mulDivFloor(cost, providerBps, bpsDenominator)
	toProvider := mulDivFloor(base, flapPPM(m.Flap), ppm)
	funding := mulDivFloor(cost-base, poolBps, bpsDenominator)
	bonus := mulDivFloor(toProvider, bountyBonusPPM(m.Bounty), ppm)
	available := satAdd(max(poolBalance, 0), funding)

	return Legs{
		Consumer:       cost,
		ToProvider:     toProvider,
		ToPlatform:     cost - toProvider,
		PlatformToPool: funding,
		PoolToProvider: min(bonus, available),
	}
}

// flapPPM converts an anti-flap factor to ppm: clamped to [0, 1], NaN = 1.
func flapPPM(f float64) int64 {
	if math.IsNaN(f) {
		return ppm
	}
	return int64(math.Round(min(max(f, 0), 1) * ppm))
}

// bountyBonusPPM converts a bounty multiplier to the ppm of the extra it
// pays (Bounty - 1): below 1 or NaN pays nothing, huge values are capped.
func bountyBonusPPM(b float64) int64 {
	if math.IsNaN(b) {
		return 0
	}
	b = min(max(b, 1), maxBountyMultiplier)
	return int64(math.Round(b*ppm)) - ppm
}

// mulDivFloor returns floor(a*b/d) for a, b >= 0 and d > 0, computing the
// product in 128 bits and saturating at math.MaxInt64.
func mulDivFloor(a, b, d int64) int64 {
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi >= uint64(d) {
		return math.MaxInt64 // quotient needs more than 64 bits
	}
	q, _ := bits.Div64(hi, lo, uint64(d))
	if q > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(q)
}

// satAdd returns a+b for a, b >= 0, saturating at math.MaxInt64.
func satAdd(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}
