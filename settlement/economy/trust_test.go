package economy

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

const day = 24 * time.Hour

func TestTierString(t *testing.T) {
	for tier, want := range map[Tier]string{
		TierNew: "new", TierEstablished: "established", TierTrusted: "trusted",
		Tier(3): "Tier(3)", Tier(-1): "Tier(-1)",
	} {
		if got := tier.String(); got != want {
			t.Errorf("Tier(%d).String() = %q, want %q", int(tier), got, want)
		}
	}
}

func TestDefaultTrustConfig(t *testing.T) {
	c := DefaultTrustConfig()
	want := TrustConfig{
		EstablishedAge: 3 * day, TrustedAge: 14 * day,
		EstablishedScore: 0.8, TrustedScore: 0.95,
		MaxBounty: [3]float64{1.0, 1.5, 2.0},
	}
	if c != want {
		t.Fatalf("DefaultTrustConfig() = %+v, want %+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestDefaultsHopNeverPaysAtFirst checks the reasoning behind the defaults:
// right after switching to a fully under-supplied model, even a trusted
// instance earns no more than it did before the switch.
func TestDefaultsHopNeverPaysAtFirst(t *testing.T) {
	tc, fc := DefaultTrustConfig(), DefaultFlapConfig()
	sw := time.Unix(1_700_000_000, 0)
	for tier := range Tier(numTiers) {
		if got := Multiplier(1, tier, tc) * fc.FlapFactor(sw, sw); got > 1 {
			t.Errorf("tier %v: bounty x flap right after a hop = %v > 1", tier, got)
		}
	}
}

func TestTrustConfigValidate(t *testing.T) {
	mod := func(f func(*TrustConfig)) TrustConfig {
		c := DefaultTrustConfig()
		f(&c)
		return c
	}
	tests := []struct {
		name string
		c    TrustConfig
		ok   bool
	}{
		{"default", DefaultTrustConfig(), true},
		{"flat bounties", mod(func(c *TrustConfig) { c.MaxBounty = [3]float64{1, 1, 1} }), true},
		{"equal thresholds", mod(func(c *TrustConfig) { c.TrustedAge, c.TrustedScore = c.EstablishedAge, c.EstablishedScore }), true},
		{"negative age", mod(func(c *TrustConfig) { c.EstablishedAge = -1 }), false},
		{"ages out of order", mod(func(c *TrustConfig) { c.TrustedAge = day }), false},
		{"scores out of order", mod(func(c *TrustConfig) { c.TrustedScore = 0.5 }), false},
		{"score above 1", mod(func(c *TrustConfig) { c.TrustedScore = 1.01 }), false},
		{"negative score", mod(func(c *TrustConfig) { c.EstablishedScore = -0.1 }), false},
		{"NaN score", mod(func(c *TrustConfig) { c.EstablishedScore = math.NaN() }), false},
		{"bounty below 1", mod(func(c *TrustConfig) { c.MaxBounty[0] = 0.9 }), false},
		{"bounty decreasing", mod(func(c *TrustConfig) { c.MaxBounty[2] = 1.2 }), false},
		{"NaN bounty", mod(func(c *TrustConfig) { c.MaxBounty[1] = math.NaN() }), false},
		{"infinite bounty", mod(func(c *TrustConfig) { c.MaxBounty[2] = math.Inf(1) }), false},
	}
	for _, tt := range tests {
		err := tt.c.Validate()
		if tt.ok != (err == nil) || (err != nil && !errors.Is(err, ErrBadConfig)) {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestTier(t *testing.T) {
	c := DefaultTrustConfig()
	tests := []struct {
		age   time.Duration
		score float64
		want  Tier
	}{
		{0, 1, TierNew},
		{-day, 1, TierNew},
		{3*day - time.Nanosecond, 1, TierNew},
		{3 * day, 0.8, TierEstablished},
		{3 * day, 0.79999, TierNew},
		{10 * day, 0.99, TierEstablished},
		{14*day - time.Nanosecond, 1, TierEstablished},
		{14 * day, 0.95, TierTrusted},
		{14 * day, 0.9499, TierEstablished},
		{100 * day, 0.5, TierNew},
		{100 * day, math.NaN(), TierNew},
		{100 * day, 1, TierTrusted},
	}
	for _, tt := range tests {
		if got := c.Tier(tt.age, tt.score); got != tt.want {
			t.Errorf("Tier(%v, %v) = %v, want %v", tt.age, tt.score, got, tt.want)
		}
	}
}

// TestTierMonotone checks that more age or a better score never lowers a tier.
func TestTierMonotone(t *testing.T) {
	c := DefaultTrustConfig()
	r := rand.New(rand.NewPCG(0x5eed, 20))
	for i := range 50_000 {
		age, score := time.Duration(r.Int64N(int64(30*day))), r.Float64()
		older, better := age+time.Duration(r.Int64N(int64(10*day))), min(score+r.Float64()/4, 1)
		tier := c.Tier(age, score)
		if c.Tier(older, score) < tier || c.Tier(age, better) < tier || !tier.valid() {
			t.Fatalf("iter %d: Tier(%v, %v) = %v, but older %v or better %v tier lower", i, age, score, tier, older, better)
		}
	}
}
