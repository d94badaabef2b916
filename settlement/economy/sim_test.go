package economy

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// simLedger is a minimal double-entry book: every movement is a transfer
// between two accounts, so the balances always sum to zero.
type simLedger map[string]int64

func (l simLedger) transfer(t *testing.T, from, to string, amount int64) {
	t.Helper()
	if amount < 0 {
		t.Fatalf("transfer %s -> %s of %d µcr: negative leg", from, to, amount)
	}
	l[from] -= amount
	l[to] += amount
}

func (l simLedger) sum() int64 {
	var s int64
	for _, b := range l {
		s += b
	}
	return s
}

// simInstance is one provider instance serving the simulated model.
type simInstance struct {
	account    string
	joined     time.Time // for its age
	score      float64   // health score over the rolling window
	switchedAt time.Time // last model switch; zero = never
}

// TestEconomySimulation runs 1,000 random paid calls over one model whose
// supply and demand swing in and out of under-supply, with instances of every
// trust tier, some of them recently switched, and books every leg in a
// double-entry ledger. It checks that the pool never goes negative, that the
// consumer pays exactly the cost of each call whatever the bounty, and that
// money is conserved exactly:
//
//	Σ cost == Σ provider income + platform net + (pool_end - pool_start)
//
// where provider income = Σ (ToProvider + PoolToProvider), platform net =
// Σ (ToPlatform - PlatformToPool) and the pool grows by
// Σ (PlatformToPool - PoolToProvider).
func TestEconomySimulation(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { runEconomySim(t, seed) })
	}
}

func runEconomySim(t *testing.T, seed uint64) {
	const model = "llama-3.1-70b"
	r := rand.New(rand.NewPCG(seed, 0xec0))
	terms, fc, tc, bc := DefaultTerms(), DefaultFlapConfig(), DefaultTrustConfig(), DefaultBountyConfig()
	price := DefaultPriceTable().Default
	now := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)

	insts := make([]simInstance, 6)
	for i := range insts {
		insts[i] = simInstance{
			account: fmt.Sprint("provider/", i),
			joined:  now.Add(-time.Duration(r.Int64N(int64(30 * day)))),
			score:   0.6 + 0.4*r.Float64(),
		}
		if r.IntN(2) == 0 {
			insts[i].switchedAt = now.Add(-time.Duration(r.Int64N(int64(100 * time.Hour))))
		}
	}

	book := simLedger{}
	// Some runs start with a pool the platform pre-funded, some empty.
	if r.IntN(2) == 0 {
		book.transfer(t, "platform", "pool", r.Int64N(300_000))
	}
	poolStart, platformStart := book["pool"], book["platform"]

	var sumCost, sumToProvider, sumToPlatform, sumFunding, sumBonus int64
	var bountyCalls, cappedCalls, fullBonusCalls int
	for call := range 1_000 {
		now = now.Add(time.Duration(r.Int64N(int64(10 * time.Minute))))
		// Demand swings around capacity, so the bounty comes and goes.
		sd := SupplyDemand{
			Model:    model,
			Capacity: float64(r.IntN(40)),
			InFlight: float64(r.IntN(45)),
			Unserved: float64(r.IntN(3)),
		}
		bounty := Bounty{}
		if bs := Bounties([]SupplyDemand{sd}, bc, tc); len(bs) == 1 && bs[0].Model == model {
			bounty = bs[0]
		}
		inst := &insts[r.IntN(len(insts))]
		if r.IntN(100) == 0 {
			inst.switchedAt = now // it hopped models just now
		}
		tier := tc.Tier(now.Sub(inst.joined), inst.score)
		m := Modifiers{Bounty: bounty.For(tier), Flap: fc.FlapFactor(inst.switchedAt, now)}
		cost := Cost(price, r.Int64N(8_000), r.Int64N(2_000))
		poolBefore := book["pool"]

		legs := ComputeLegs(cost, terms, m, poolBefore)
		book.transfer(t, "consumer", inst.account, legs.ToProvider)
		book.transfer(t, "consumer", "platform", legs.ToPlatform)
		book.transfer(t, "platform", "pool", legs.PlatformToPool)
		book.transfer(t, "pool", inst.account, legs.PoolToProvider)

		if book["pool"] < 0 {
			t.Fatalf("call %d: pool went negative: %d (legs %+v, before %d)", call, book["pool"], legs, poolBefore)
		}
		if book.sum() != 0 {
			t.Fatalf("call %d: ledger sums to %d, not 0", call, book.sum())
		}
		if legs.Consumer != cost || legs.ToProvider+legs.ToPlatform != cost {
			t.Fatalf("call %d: consumer paid %d (%+v) for a call costing %d", call, legs.Consumer, legs, cost)
		}
		// The bounty cost the consumer nothing: the same call without it
		// charges the consumer, and pays the platform, exactly the same.
		plain := ComputeLegs(cost, terms, Modifiers{Bounty: 1, Flap: m.Flap}, poolBefore)
		if plain.Consumer != legs.Consumer || plain.ToPlatform != legs.ToPlatform || plain.PlatformToPool != legs.PlatformToPool {
			t.Fatalf("call %d: bounty %v changed the consumer or platform legs: %+v vs %+v", call, m.Bounty, legs, plain)
		}
		if m.Bounty > 1 {
			bountyCalls++
			uncapped := ComputeLegs(cost, terms, m, 1<<62).PoolToProvider
			switch {
			case legs.PoolToProvider < uncapped:
				cappedCalls++
				if legs.PoolToProvider != poolBefore+legs.PlatformToPool {
					t.Fatalf("call %d: capped bonus %d did not drain the pool (%d + %d)", call, legs.PoolToProvider, poolBefore, legs.PlatformToPool)
				}
			case legs.PoolToProvider > 0:
				fullBonusCalls++
			}
		}

		sumCost += cost
		sumToProvider += legs.ToProvider
		sumToPlatform += legs.ToPlatform
		sumFunding += legs.PlatformToPool
		sumBonus += legs.PoolToProvider
	}

	var providerIncome int64
	for _, in := range insts {
		providerIncome += book[in.account]
	}
	platformNet := book["platform"] - platformStart
	poolGrowth := book["pool"] - poolStart

	if -book["consumer"] != sumCost {
		t.Fatalf("consumer paid %d, calls cost %d", -book["consumer"], sumCost)
	}
	if providerIncome != sumToProvider+sumBonus {
		t.Fatalf("provider income %d != Σ ToProvider %d + Σ PoolToProvider %d", providerIncome, sumToProvider, sumBonus)
	}
	if platformNet != sumToPlatform-sumFunding {
		t.Fatalf("platform net %d != Σ ToPlatform %d - Σ PlatformToPool %d", platformNet, sumToPlatform, sumFunding)
	}
	if poolGrowth != sumFunding-sumBonus {
		t.Fatalf("pool grew %d != Σ PlatformToPool %d - Σ PoolToProvider %d", poolGrowth, sumFunding, sumBonus)
	}
	if sumCost != providerIncome+platformNet+poolGrowth {
		t.Fatalf("conservation: Σ cost %d != provider income %d + platform net %d + pool growth %d",
			sumCost, providerIncome, platformNet, poolGrowth)
	}
	if sumBonus > poolStart+sumFunding {
		t.Fatalf("bonuses %d exceed the pool's start %d plus funding %d", sumBonus, poolStart, sumFunding)
	}
	if platformNet < 0 {
		t.Fatalf("platform lost money on its calls: %d", platformNet)
	}
	// The run must have exercised bounties, both paid in full and capped by
	// the pool, or it proves nothing.
	if bountyCalls == 0 || fullBonusCalls == 0 || cappedCalls == 0 {
		t.Fatalf("weak run: %d bounty calls, %d paid in full, %d capped", bountyCalls, fullBonusCalls, cappedCalls)
	}
	t.Logf("Σ cost %s = providers %s + platform %s + pool growth %s; %d bounty calls (%d full, %d capped)",
		FormatCredits(sumCost), FormatCredits(providerIncome), FormatCredits(platformNet), FormatCredits(poolGrowth),
		bountyCalls, fullBonusCalls, cappedCalls)
}
