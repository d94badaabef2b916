package economy

import (
	"math"
	"math/big"
)

// StartingCreditUcr is the grant a new account receives from the mint:
// 5 credits (SPEC §2).
const StartingCreditUcr = 5_000_000

// DefaultProviderBps is the provider's share of a call in basis points:
// 80% to the provider, 20% to the platform (SPEC §5).
const DefaultProviderBps = 8000

// bpsDenominator is 100% in basis points.
const bpsDenominator = 10_000

// tokensPerPriceUnit is the token count a Price is quoted for.
const tokensPerPriceUnit = 1_000_000

// Cost returns the µcr charged for a call:
//
//	ceil((inputTokens*p.InputPer1M + outputTokens*p.OutputPer1M) / 1e6)
//
// computed exactly (the intermediate sum can exceed 64 bits). Rounding is up,
// so a call that consumed any priced token costs at least 1 µcr; the consumer
// owns that remainder. Negative token counts and prices count as zero. A
// result beyond math.MaxInt64 µcr (9.2 trillion credits, unreachable by real
// calls) is clamped to math.MaxInt64.
func Cost(p Price, inputTokens, outputTokens int64) int64 {
	in, out := nonNeg(inputTokens), nonNeg(outputTokens)
	pin, pout := nonNeg(p.InputPer1M), nonNeg(p.OutputPer1M)

	total := new(big.Int).Mul(big.NewInt(in), big.NewInt(pin))
	total.Add(total, new(big.Int).Mul(big.NewInt(out), big.NewInt(pout)))
	// ceil(total / 1e6) = (total + 1e6 - 1) / 1e6 for total >= 0.
	total.Add(total, big.NewInt(tokensPerPriceUnit-1))
	total.Quo(total, big.NewInt(tokensPerPriceUnit))
	if !total.IsInt64() {
		return math.MaxInt64
	}
	return total.Int64()
}

// Split is a call's cost divided between the node's provider and the platform.
type Split struct {
	// Provider is the µcr paid to the provider of the node that served the call.
	Provider int64
	// Platform is the µcr kept by the platform, including the rounding remainder.
	Platform int64
}

// SplitCost splits cost between provider and platform:
//
//	Provider = floor(cost * providerBps / 10000)
//	Platform = cost - Provider
//
// The platform owns the rounding remainder, so Provider+Platform == cost
// always. providerBps is clamped to [0, 10000]; the product is computed in
// 128 bits, so no cost overflows. Callers normally pass DefaultProviderBps.
func SplitCost(cost int64, providerBps int64) Split {
	bps := min(max(providerBps, 0), bpsDenominator)
	prod := new(big.Int).Mul(big.NewInt(cost), big.NewInt(bps))
	// big.Int.Div is Euclidean division: floor for a positive divisor, also
	// for a negative cost (a refund split the same way).
	provider := prod.Div(prod, big.NewInt(bpsDenominator)).Int64()
	return Split{Provider: provider, Platform: cost - provider}
}

func nonNeg(v int64) int64 {
	if v < 0 {
		return 0
	}
	return v
}
