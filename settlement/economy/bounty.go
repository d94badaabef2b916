package economy

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// SupplyDemand is one model's supply and demand as measured from gossip
// (SPEC §5).
type SupplyDemand struct {
	// Model is the model name as clients send it.
	Model string
	// Capacity is how many concurrent calls the model's live instances can take.
	Capacity float64
	// InFlight is how many calls to the model are running now.
	InFlight float64
	// Unserved is how many calls per minute were turned away for lack of
	// capacity.
	Unserved float64
}

// BountyConfig configures how under-supply is measured.
type BountyConfig struct {
	// Target is the utilisation above which a model counts as under-supplied.
	Target float64
	// Full is the utilisation, >= Target, at which a model is fully
	// under-supplied and the maximum multiplier applies.
	Full float64
	// UnservedWeight converts calls turned away per minute into concurrent
	// calls of demand.
	UnservedWeight float64
}

// DefaultBountyConfig returns the default under-supply measure.
func DefaultBountyConfig() BountyConfig {
	return BountyConfig{
		Target:         0.8, // above 80% busy, a burst or one instance leaving starts turning calls away: pay for headroom first
		Full:           1.0, // at 100% every further call is refused: the full multiplier
		UnservedWeight: 1.0, // a refusal per minute counts as one concurrent call (Little's law for a 60 s call): refusals are the surest sign of shortage
	}
}

// Validate reports whether 0 <= Target <= Full and UnservedWeight >= 0, all
// finite.
func (c BountyConfig) Validate() error {
	if !(c.Target >= 0 && c.Target <= c.Full) || math.IsInf(c.Full, 0) {
		return fmt.Errorf("%w: want 0 <= Target (%v) <= Full (%v), finite", ErrBadConfig, c.Target, c.Full)
	}
	if !(c.UnservedWeight >= 0) || math.IsInf(c.UnservedWeight, 0) {
		return fmt.Errorf("%w: UnservedWeight %v: want finite and >= 0", ErrBadConfig, c.UnservedWeight)
	}
	return nil
}

// UnderSupply returns how under-supplied a model is, in [0, 1]. With
// utilisation = (InFlight + UnservedWeight*Unserved) / Capacity, it is 0 when
// utilisation <= Target, 1 when utilisation >= Full, and linear in between.
// A model with no capacity is 1 if there is any demand and 0 if there is
// none. Negative, NaN or infinite measurements and UnservedWeight count as
// 0, as do a negative or NaN Target or Full; if Full <= Target, any
// utilisation above Target is 1.
func (c BountyConfig) UnderSupply(sd SupplyDemand) float64 {
	demand := finiteNonNeg(sd.InFlight) + finiteNonNeg(c.UnservedWeight)*finiteNonNeg(sd.Unserved)
	capacity := finiteNonNeg(sd.Capacity)
	if demand == 0 {
		return 0
	}
	if capacity == 0 {
		return 1
	}
	util := demand / capacity
	target, full := nonNegF(c.Target), nonNegF(c.Full)
	switch {
	case util <= target:
		return 0
	case util >= full:
		return 1
	}
	r := (util - target) / (full - target)
	if math.IsNaN(r) {
		return 0
	}
	return min(max(r, 0), 1)
}

// Multiplier is the bounty multiplier for a provider in tier t on a model
// with under-supply u:
//
//	1 + u*(tc.MaxBounty[t] - 1)
//
// u is clamped to [0, 1] (NaN counts as 0). An unknown tier, or a MaxBounty
// below 1 or NaN, gets 1: a bounty never lowers pay.
func Multiplier(u float64, t Tier, tc TrustConfig) float64 {
	if !t.valid() || math.IsNaN(u) {
		return 1
	}
	maxB := tc.MaxBounty[t]
	if !(maxB > 1) {
		return 1
	}
	maxB = min(maxB, maxBountyMultiplier)
	return 1 + min(max(u, 0), 1)*(maxB-1)
}

// Bounty is an active bounty on an under-supplied model, as served to
// gateways and providers.
type Bounty struct {
	// Model is the under-supplied model.
	Model string `json:"model"`
	// UnderSupply is the model's under-supply in (0, 1].
	UnderSupply float64 `json:"under_supply"`
	// Multipliers is the payout multiplier per tier, keyed by Tier.String().
	Multipliers map[string]float64 `json:"multipliers"`
}

// For returns the multiplier b pays a provider in tier t, or 1 if none.
func (b Bounty) For(t Tier) float64 {
	if m, ok := b.Multipliers[t.String()]; ok {
		return m
	}
	return 1
}

// Bounties returns the active bounties: one per model whose UnderSupply is
// above 0, sorted by model name. Entries of sds naming the same model are
// summed field by field first (as disjoint shares of one model's supply and
// demand). The result is never nil, so it encodes as a JSON array.
func Bounties(sds []SupplyDemand, bc BountyConfig, tc TrustConfig) []Bounty {
	merged := make(map[string]SupplyDemand, len(sds))
	for _, sd := range sds {
		m := merged[sd.Model]
		m.Model = sd.Model
		m.Capacity += finiteNonNeg(sd.Capacity)
		m.InFlight += finiteNonNeg(sd.InFlight)
		m.Unserved += finiteNonNeg(sd.Unserved)
		merged[sd.Model] = m
	}
	out := make([]Bounty, 0, len(merged))
	for model, sd := range merged {
		u := bc.UnderSupply(sd)
		if !(u > 0) {
			continue
		}
		mult := make(map[string]float64, numTiers)
		for t := range Tier(numTiers) {
			mult[t.String()] = Multiplier(u, t, tc)
		}
		out = append(out, Bounty{Model: model, UnderSupply: u, Multipliers: mult})
	}
	slices.SortFunc(out, func(a, b Bounty) int { return strings.Compare(a.Model, b.Model) })
	return out
}

// nonNegF returns v, or 0 if v is negative or NaN.
func nonNegF(v float64) float64 {
	if !(v > 0) {
		return 0
	}
	return v
}

// finiteNonNeg returns v, or 0 if v is negative, NaN or infinite.
func finiteNonNeg(v float64) float64 {
	if !(v > 0) || math.IsInf(v, 1) {
		return 0
	}
	return v
}
