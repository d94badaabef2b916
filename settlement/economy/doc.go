// Package economy holds the pure money rules of Token-Router (SPEC §5): what
// a call costs, how the payment is split, what anti-flapping and bounties do
// to a provider's pay, and which trust tier an instance is in.
//
// Every amount is an integer number of micro-credits (µcr; 1 credit =
// 1,000,000 µcr). Nothing here reads a clock, draws randomness or does I/O,
// except LoadPriceTable, which reads the price file the settlement peer is
// started with: time, scores and supply/demand are passed in, results are
// returned, and the caller books the transfers. The simulator and the live
// binary call the same functions.
//
// # One paid call
//
// The settlement peer prices the call and computes its legs:
//
//	cost := Cost(prices.For(model), promptTokens, completionTokens)
//	tier := trust.Tier(instanceAge, healthScore)              // TierNew, TierEstablished, TierTrusted
//	mods := Modifiers{
//		Bounty: bounty.For(tier),                             // 1 unless the model is under-supplied
//		Flap:   flap.FlapFactor(lastModelSwitch, now),        // 1 unless the instance switched model lately
//	}
//	legs := ComputeLegs(cost, DefaultTerms(), mods, poolBalance)
//
// and books four transfers, each a double-entry movement:
//
//	consumer    -> provider     legs.ToProvider
//	consumer    -> platform     legs.ToPlatform
//	platform    -> bounty pool  legs.PlatformToPool
//	bounty pool -> provider     legs.PoolToProvider
//
// The consumer pays exactly cost (Consumer == ToProvider + ToPlatform), with
// or without a bounty: bounties are funded from the platform's share through
// the bounty pool, never by the consumer, and the pool never goes negative
// because a bonus is capped by its balance plus this call's funding. Over
// any run of calls,
//
//	Σ cost == Σ (ToProvider + PoolToProvider)        // providers' income
//	        + Σ (ToPlatform - PlatformToPool)        // platform's net
//	        + (pool_end - pool_start)                // bounty pool growth
//
// # Modifiers
//
// Anti-flapping (FlapConfig): an instance that switches the model it serves
// is paid Cut (50%) of its share right after the switch, rising linearly to
// full pay over Decay (72 h); the cut stays with the platform.
//
// Trust tiers (TrustConfig): an instance is new, established (3 days and a
// score of 0.8 over the rolling health window) or trusted (14 days and
// 0.95). A tier caps the bounty an instance can earn (1x, 1.5x, 2x).
//
// Bounties (BountyConfig): from gossiped supply and demand, a model's
// under-supply rises from 0 at 80% utilisation to 1 at 100% (calls turned
// away count as demand). Bounties lists the under-supplied models with each
// tier's multiplier 1 + under-supply*(MaxBounty[tier]-1).
//
// # Rounding
//
// Rounding has named owners: Cost rounds up (a call that used any tokens is
// never free); SplitCost and ComputeLegs give the provider the floor of its
// share and the platform the remainder, so Provider+Platform == cost exactly;
// the float multipliers are rounded to the nearest part per million before
// they multiply money, and every product with money is floored, so anti-flap
// and bonus remainders stay with the platform and the pool.
package economy
