package economy

import (
	"errors"
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
)

func TestDefaultTerms(t *testing.T) {
	d := DefaultTerms()
	if d.ProviderBps != 8000 || d.PoolBps != 2500 {
		t.Fatalf("DefaultTerms() = %+v", d)
	}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestTermsValidate(t *testing.T) {
	tests := []struct {
		terms Terms
		ok    bool
	}{
		{Terms{}, true},
		{Terms{ProviderBps: 10_000, PoolBps: 10_000}, true},
		{Terms{ProviderBps: -1}, false},
		{Terms{ProviderBps: 10_001}, false},
		{Terms{PoolBps: -1}, false},
		{Terms{PoolBps: 10_001}, false},
	}
	for _, tt := range tests {
		err := tt.terms.Validate()
		if tt.ok != (err == nil) || (err != nil && !errors.Is(err, ErrBadConfig)) {
			t.Errorf("%+v.Validate() = %v, want ok=%v", tt.terms, err, tt.ok)
		}
	}
}

func TestComputeLegs(t *testing.T) {
	def := DefaultTerms()
	none := NoModifiers()
	mods := func(bounty, flap float64) Modifiers { return Modifiers{Bounty: bounty, Flap: flap} }
	const maxI = math.MaxInt64
	tests := []struct {
		name  string
		cost  int64
		terms Terms
		m     Modifiers
		pool  int64
		want  Legs
	}{
		{"zero cost", 0, def, mods(2, 1), 100, Legs{}},
		{"one credit plain", 1_000_000, def, none, 0, Legs{1_000_000, 800_000, 200_000, 50_000, 0}},
		{"bounty capped by empty pool plus funding", 1_000_000, def, mods(1.5, 1), 0, Legs{1_000_000, 800_000, 200_000, 50_000, 50_000}},
		{"bounty paid from pool", 1_000_000, def, mods(1.5, 1), 1_000_000, Legs{1_000_000, 800_000, 200_000, 50_000, 400_000}},
		{"bounty exactly drains pool", 1_000_000, def, mods(1.5, 1), 350_000, Legs{1_000_000, 800_000, 200_000, 50_000, 400_000}},
		{"flap cut stays with platform", 1_000_000, def, mods(1, 0.5), 0, Legs{1_000_000, 400_000, 600_000, 50_000, 0}},
		{"flap also cuts the bonus", 1_000_000, def, mods(2, 0.5), 1 << 40, Legs{1_000_000, 400_000, 600_000, 50_000, 400_000}},
		{"funding from nominal cut, not flap cut", 1_000, def, mods(1, 0.25), 0, Legs{1_000, 200, 800, 50, 0}},
		{"small cost remainder to platform", 7, def, none, 0, Legs{7, 5, 2, 0, 0}},
		{"flap floors", 7, def, mods(1, 0.5), 0, Legs{7, 2, 5, 0, 0}},
		{"bonus floors", 7, def, mods(1.5, 1), 100, Legs{7, 5, 2, 0, 2}},
		{"flap rounded to ppm", 3_000_000, def, mods(1, 1.0/3), 0, Legs{3_000_000, 799_999, 2_200_001, 150_000, 0}},
		{"flap ppm rounds to nearest", 10_000_000, def, mods(1, 0.1234567), 0, Legs{10_000_000, 987_656, 9_012_344, 500_000, 0}},
		{"negative cost counts as zero", -5, def, none, 10, Legs{}},
		{"negative pool counts as zero", 1_000_000, def, mods(2, 1), -1_000, Legs{1_000_000, 800_000, 200_000, 50_000, 50_000}},
		{"NaN bounty is none", 1_000_000, def, mods(math.NaN(), 1), 1 << 40, Legs{1_000_000, 800_000, 200_000, 50_000, 0}},
		{"bounty below 1 is none", 1_000_000, def, mods(0.5, 1), 1 << 40, Legs{1_000_000, 800_000, 200_000, 50_000, 0}},
		{"zero-value modifiers pay the provider nothing", 1_000_000, def, Modifiers{}, 1 << 40, Legs{1_000_000, 0, 1_000_000, 50_000, 0}},
		{"NaN flap is none", 1_000_000, def, mods(1, math.NaN()), 0, Legs{1_000_000, 800_000, 200_000, 50_000, 0}},
		{"flap above 1 clamps", 1_000_000, def, mods(1, 3), 0, Legs{1_000_000, 800_000, 200_000, 50_000, 0}},
		{"negative flap clamps to 0", 1_000_000, def, mods(1, -1), 0, Legs{1_000_000, 0, 1_000_000, 50_000, 0}},
		{"provider bps clamps high", 100, Terms{ProviderBps: 20_000, PoolBps: 10_000}, none, 0, Legs{100, 100, 0, 0, 0}},
		{"provider bps clamps low", 100, Terms{ProviderBps: -1, PoolBps: 10_000}, none, 0, Legs{100, 0, 100, 100, 0}},
		{"pool bps clamps", 100, Terms{ProviderBps: 8000, PoolBps: -3}, mods(2, 1), 0, Legs{100, 80, 20, 0, 0}},
		{"all of platform cut to pool", 100, Terms{ProviderBps: 8000, PoolBps: 10_000}, mods(2, 1), 0, Legs{100, 80, 20, 20, 20}},
		{"max cost no overflow", maxI, def, mods(2, 1), maxI,
			Legs{maxI, 7378697629483820645, 1844674407370955162, 461168601842738790, 7378697629483820645}},
		{"huge bounty saturates then caps", maxI, def, mods(1e300, 1), 5, Legs{maxI, 7378697629483820645, 1844674407370955162, 461168601842738790, 461168601842738795}},
		{"infinite bounty caps", 1_000, def, mods(math.Inf(1), 1), 1_000_000, Legs{1_000, 800, 200, 50, 1_000_050}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ComputeLegs(tt.cost, tt.terms, tt.m, tt.pool)
			if got != tt.want {
				t.Fatalf("ComputeLegs(%d, %+v, %+v, %d) =\n %+v, want\n %+v", tt.cost, tt.terms, tt.m, tt.pool, got, tt.want)
			}
		})
	}
}

// refLegs is an independent big.Int model of ComputeLegs for in-range inputs:
// terms in [0, 10000], Flap in [0, 1], Bounty in [1, 1e6], cost and pool >= 0.
func refLegs(cost int64, t Terms, m Modifiers, pool int64) Legs {
	b := big.NewInt
	floorDiv := func(x *big.Int, d int64) *big.Int { return new(big.Int).Div(x, b(d)) }
	mul := func(x *big.Int, y int64) *big.Int { return new(big.Int).Mul(x, b(y)) }
	c := b(cost)
	base := floorDiv(mul(c, t.ProviderBps), 10_000)
	toProvider := floorDiv(mul(base, int64(math.Round(m.Flap*1e6))), 1_000_000)
	funding := floorDiv(mul(new(big.Int).Sub(c, base), t.PoolBps), 10_000)
	bonus := floorDiv(mul(toProvider, int64(math.Round(m.Bounty*1e6))-1_000_000), 1_000_000)
	avail := new(big.Int).Add(b(pool), funding)
	if bonus.Cmp(avail) > 0 {
		bonus = avail
	}
	if !bonus.IsInt64() {
		bonus = b(math.MaxInt64)
	}
	return Legs{
		Consumer:       cost,
		ToProvider:     toProvider.Int64(),
		ToPlatform:     cost - toProvider.Int64(),
		PlatformToPool: funding.Int64(),
		PoolToProvider: bonus.Int64(),
	}
}

// randAmount draws a µcr amount from a mix of scales, edge values included.
func randAmount(r *rand.Rand) int64 {
	switch r.IntN(6) {
	case 0:
		return r.Int64N(20)
	case 1:
		return r.Int64N(10_000_000)
	case 2:
		return r.Int64N(1 << 40)
	case 3:
		return math.MaxInt64 - r.Int64N(20)
	case 4:
		return r.Int64()
	default:
		return r.Int64N(1_000_000_000_000)
	}
}

func randTerms(r *rand.Rand) Terms {
	bps := func() int64 {
		switch r.IntN(4) {
		case 0:
			return []int64{0, 1, 5000, 9999, 10_000}[r.IntN(5)]
		default:
			return r.Int64N(10_001)
		}
	}
	return Terms{ProviderBps: bps(), PoolBps: bps()}
}

func randModifiers(r *rand.Rand) Modifiers {
	m := Modifiers{Bounty: 1 + r.Float64()*2, Flap: r.Float64()}
	switch r.IntN(6) {
	case 0:
		m.Bounty = 1
	case 1:
		m.Flap = 1
	case 2:
		m = NoModifiers()
	case 3:
		m.Bounty = 1 + r.Float64()*1000
	}
	return m
}

// TestComputeLegsProperties checks the money invariants of ComputeLegs over
// random costs, terms, modifiers and pool balances.
func TestComputeLegsProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(0x5eed, 1))
	for i := range 200_000 {
		cost, terms, m, pool := randAmount(r), randTerms(r), randModifiers(r), randAmount(r)
		l := ComputeLegs(cost, terms, m, pool)
		fail := func(what string) {
			t.Fatalf("iter %d: ComputeLegs(%d, %+v, %+v, %d) = %+v: %s", i, cost, terms, m, pool, l, what)
		}
		if l.Consumer != cost || l.ToProvider+l.ToPlatform != cost {
			fail("Consumer != cost == ToProvider+ToPlatform")
		}
		if l.Consumer < 0 || l.ToProvider < 0 || l.ToPlatform < 0 || l.PlatformToPool < 0 || l.PoolToProvider < 0 {
			fail("negative leg")
		}
		if pool <= math.MaxInt64-l.PlatformToPool && l.PoolToProvider > pool+l.PlatformToPool {
			fail("bonus exceeds pool plus funding")
		}
		if l.PlatformToPool > l.ToPlatform {
			fail("pool funded beyond the platform's share")
		}
		if want := refLegs(cost, terms, m, pool); l != want {
			t.Fatalf("iter %d: ComputeLegs(%d, %+v, %+v, %d) = %+v, big.Int model says %+v", i, cost, terms, m, pool, l, want)
		}
		// A bounty changes only the bonus: the consumer never pays more and
		// the platform's take and funding are the same as without it.
		nb := ComputeLegs(cost, terms, Modifiers{Bounty: 1, Flap: m.Flap}, pool)
		if nb.Consumer != l.Consumer || nb.ToPlatform != l.ToPlatform || nb.ToProvider != l.ToProvider ||
			nb.PlatformToPool != l.PlatformToPool || nb.PoolToProvider != 0 {
			t.Fatalf("iter %d: bounty %v changed more than the bonus: %+v vs no bounty %+v", i, m.Bounty, l, nb)
		}
		// Anti-flap only ever lowers the provider's share.
		if plain := SplitCost(cost, terms.ProviderBps); l.ToProvider > plain.Provider {
			fail("anti-flap raised the provider's share")
		}
		// No modifiers is exactly SplitCost.
		p := ComputeLegs(cost, terms, NoModifiers(), pool)
		if s := SplitCost(cost, terms.ProviderBps); p.ToProvider != s.Provider || p.ToPlatform != s.Platform || p.PoolToProvider != 0 {
			t.Fatalf("iter %d: ComputeLegs without modifiers = %+v, SplitCost = %+v", i, p, s)
		}
	}
}

// TestComputeLegsMonotone checks that a larger flap factor or bounty never
// pays the provider less, and a fuller pool never pays a smaller bonus.
func TestComputeLegsMonotone(t *testing.T) {
	r := rand.New(rand.NewPCG(0x5eed, 2))
	for i := range 50_000 {
		cost, terms, pool := randAmount(r), randTerms(r), randAmount(r)
		m1, m2 := randModifiers(r), randModifiers(r)
		if m1.Flap > m2.Flap {
			m1.Flap, m2.Flap = m2.Flap, m1.Flap
		}
		if m1.Bounty > m2.Bounty {
			m1.Bounty, m2.Bounty = m2.Bounty, m1.Bounty
		}
		a, b := ComputeLegs(cost, terms, m1, pool), ComputeLegs(cost, terms, m2, pool)
		if a.ToProvider > b.ToProvider || a.PoolToProvider > b.PoolToProvider {
			t.Fatalf("iter %d: %+v -> %+v but %+v -> %+v", i, m1, a, m2, b)
		}
		morePool := satAdd(pool, r.Int64N(1_000_000))
		if c := ComputeLegs(cost, terms, m2, morePool); c.PoolToProvider < b.PoolToProvider {
			t.Fatalf("iter %d: pool %d -> bonus %d, pool %d -> bonus %d", i, pool, b.PoolToProvider, morePool, c.PoolToProvider)
		}
	}
}

func TestMulDivFloor(t *testing.T) {
	r := rand.New(rand.NewPCG(0x5eed, 3))
	for i := range 100_000 {
		a, b := randAmount(r), randAmount(r)
		d := []int64{1, 3, bpsDenominator, ppm, math.MaxInt64}[r.IntN(5)]
		if i%3 == 0 {
			d = 1 + r.Int64N(math.MaxInt64)
		}
		want := new(big.Int).Mul(big.NewInt(a), big.NewInt(b))
		want.Div(want, big.NewInt(d))
		if !want.IsInt64() {
			want = big.NewInt(math.MaxInt64)
		}
		if got := mulDivFloor(a, b, d); got != want.Int64() {
			t.Fatalf("mulDivFloor(%d, %d, %d) = %d, want %d", a, b, d, got, want)
		}
	}
}
