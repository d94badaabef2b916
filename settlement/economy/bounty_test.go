package economy

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func TestDefaultBountyConfig(t *testing.T) {
	c := DefaultBountyConfig()
	if c != (BountyConfig{Target: 0.8, Full: 1.0, UnservedWeight: 1.0}) {
		t.Fatalf("DefaultBountyConfig() = %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestBountyConfigValidate(t *testing.T) {
	tests := []struct {
		c  BountyConfig
		ok bool
	}{
		{BountyConfig{}, true},
		{BountyConfig{Target: 0.5, Full: 0.5, UnservedWeight: 0}, true},
		{BountyConfig{Target: -0.1, Full: 1}, false},
		{BountyConfig{Target: 0.9, Full: 0.8}, false},
		{BountyConfig{Target: math.NaN(), Full: 1}, false},
		{BountyConfig{Target: 0.8, Full: math.Inf(1)}, false},
		{BountyConfig{Target: 0.8, Full: 1, UnservedWeight: -1}, false},
		{BountyConfig{Target: 0.8, Full: 1, UnservedWeight: math.NaN()}, false},
		{BountyConfig{Target: 0.8, Full: 1, UnservedWeight: math.Inf(1)}, false},
	}
	for _, tt := range tests {
		err := tt.c.Validate()
		if tt.ok != (err == nil) || (err != nil && !errors.Is(err, ErrBadConfig)) {
			t.Errorf("%+v.Validate() = %v, want ok=%v", tt.c, err, tt.ok)
		}
	}
}

func TestUnderSupply(t *testing.T) {
	def := DefaultBountyConfig()
	sd := func(capacity, inFlight, unserved float64) SupplyDemand {
		return SupplyDemand{Model: "m", Capacity: capacity, InFlight: inFlight, Unserved: unserved}
	}
	tests := []struct {
		name string
		c    BountyConfig
		sd   SupplyDemand
		want float64
	}{
		{"idle", def, sd(10, 0, 0), 0},
		{"nothing at all", def, sd(0, 0, 0), 0},
		{"below target", def, sd(10, 5, 0), 0},
		{"at target", def, sd(10, 8, 0), 0},
		{"half way", def, sd(10, 9, 0), 0.5},
		{"at full", def, sd(10, 10, 0), 1},
		{"beyond full", def, sd(10, 30, 0), 1},
		{"unserved counts as demand", def, sd(10, 8, 1), 0.5},
		{"unserved weighted", BountyConfig{Target: 0.8, Full: 1, UnservedWeight: 0.5}, sd(10, 8, 2), 0.5},
		{"unserved ignored at weight 0", BountyConfig{Target: 0.8, Full: 1}, sd(10, 8, 100), 0},
		{"no capacity with demand", def, sd(0, 1, 0), 1},
		{"no capacity with refusals only", def, sd(0, 0, 0.1), 1},
		{"negative capacity counts as 0", def, sd(-5, 1, 0), 1},
		{"negative demand counts as 0", def, sd(10, -50, -3), 0},
		{"NaN capacity counts as 0", def, sd(math.NaN(), 1, 0), 1},
		{"infinite in-flight counts as 0", def, sd(10, math.Inf(1), 0), 0},
		{"infinite capacity counts as 0", def, sd(math.Inf(1), 1, 0), 1},
		{"infinite weight counts as 0", BountyConfig{Target: 0.8, Full: 1, UnservedWeight: math.Inf(1)}, sd(10, 9, 0), 0.5},
		{"step when full equals target", BountyConfig{Target: 0.8, Full: 0.8}, sd(10, 8.01, 0), 1},
		{"step when full below target", BountyConfig{Target: 0.8, Full: 0.5}, sd(10, 8.01, 0), 1},
		{"full below target at target", BountyConfig{Target: 0.8, Full: 0.5}, sd(10, 8, 0), 0},
		{"infinite target never", BountyConfig{Target: math.Inf(1), Full: math.Inf(1)}, sd(1, 1e300, 0), 0},
		{"overflowing demand", BountyConfig{Target: 0.8, Full: 1, UnservedWeight: 1e300}, sd(1, 0, 1e300), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.c.UnderSupply(tt.sd); math.Abs(got-tt.want) > 1e-9 {
				t.Fatalf("UnderSupply(%+v) = %v, want %v", tt.sd, got, tt.want)
			}
		})
	}
}

// TestUnderSupplyProperties checks that under-supply stays in [0, 1], rises
// with demand and falls with capacity.
func TestUnderSupplyProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(0x5eed, 30))
	for i := range 100_000 {
		target := r.Float64() * 2
		c := BountyConfig{Target: target, Full: target + r.Float64(), UnservedWeight: r.Float64() * 3}
		sd := SupplyDemand{Capacity: r.Float64() * 100, InFlight: r.Float64() * 150, Unserved: r.Float64() * 20}
		if r.IntN(10) == 0 {
			sd.Capacity = 0
		}
		u := c.UnderSupply(sd)
		more := sd
		more.InFlight += r.Float64() * 10
		more.Unserved += r.Float64() * 5
		less := sd
		less.Capacity += r.Float64() * 10
		um, ul := c.UnderSupply(more), c.UnderSupply(less)
		if !(u >= 0 && u <= 1) || um < u || (sd.Capacity > 0 && ul > u) {
			t.Fatalf("iter %d: %+v: u(%+v)=%v, more demand %v, more capacity %v", i, c, sd, u, um, ul)
		}
	}
}

func TestMultiplier(t *testing.T) {
	def := DefaultTrustConfig()
	tests := []struct {
		name string
		u    float64
		tier Tier
		tc   TrustConfig
		want float64
	}{
		{"no under-supply", 0, TierTrusted, def, 1},
		{"new never earns", 1, TierNew, def, 1},
		{"established full", 1, TierEstablished, def, 1.5},
		{"trusted full", 1, TierTrusted, def, 2},
		{"trusted half", 0.5, TierTrusted, def, 1.5},
		{"established quarter", 0.25, TierEstablished, def, 1.125},
		{"u above 1 clamps", 7, TierTrusted, def, 2},
		{"negative u clamps", -1, TierTrusted, def, 1},
		{"NaN u", math.NaN(), TierTrusted, def, 1},
		{"unknown tier", 1, Tier(9), def, 1},
		{"negative tier", 1, Tier(-1), def, 1},
		{"max below 1 never lowers pay", 1, TierNew, TrustConfig{MaxBounty: [3]float64{0.5, 1, 1}}, 1},
		{"NaN max", 1, TierNew, TrustConfig{MaxBounty: [3]float64{math.NaN(), 1, 1}}, 1},
		{"infinite max capped", 1, TierTrusted, TrustConfig{MaxBounty: [3]float64{1, 1, math.Inf(1)}}, maxBountyMultiplier},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Multiplier(tt.u, tt.tier, tt.tc); math.Abs(got-tt.want) > 1e-12 {
				t.Fatalf("Multiplier(%v, %v) = %v, want %v", tt.u, tt.tier, got, tt.want)
			}
		})
	}
}

func TestBounties(t *testing.T) {
	bc, tc := DefaultBountyConfig(), DefaultTrustConfig()
	sds := []SupplyDemand{
		{Model: "zeta", Capacity: 10, InFlight: 10},             // full: 1
		{Model: "idle", Capacity: 10, InFlight: 1},              // not under-supplied
		{Model: "alpha", Capacity: 10, InFlight: 9},             // 0.5
		{Model: "split", Capacity: 5, InFlight: 4},              // merged below with the second half
		{Model: "split", Capacity: 5, InFlight: 4, Unserved: 1}, // together: 9/10 -> 0.5
		{Model: "orphan", InFlight: 1},                          // no capacity: 1
		{Model: "dead", Capacity: 0},                            // nothing either way
	}
	got := Bounties(sds, bc, tc)
	want := []Bounty{
		{Model: "alpha", UnderSupply: 0.5, Multipliers: map[string]float64{"new": 1, "established": 1.25, "trusted": 1.5}},
		{Model: "orphan", UnderSupply: 1, Multipliers: map[string]float64{"new": 1, "established": 1.5, "trusted": 2}},
		{Model: "split", UnderSupply: 0.5, Multipliers: map[string]float64{"new": 1, "established": 1.25, "trusted": 1.5}},
		{Model: "zeta", UnderSupply: 1, Multipliers: map[string]float64{"new": 1, "established": 1.5, "trusted": 2}},
	}
	if len(got) != len(want) {
		t.Fatalf("Bounties = %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Model != w.Model || math.Abs(g.UnderSupply-w.UnderSupply) > 1e-9 || len(g.Multipliers) != len(w.Multipliers) {
			t.Fatalf("Bounties[%d] = %+v, want %+v", i, g, w)
		}
		for k, v := range w.Multipliers {
			if math.Abs(g.Multipliers[k]-v) > 1e-9 {
				t.Fatalf("Bounties[%d].Multipliers[%q] = %v, want %v", i, k, g.Multipliers[k], v)
			}
		}
	}
	if m := got[3].For(TierTrusted); m != 2 {
		t.Fatalf("For(trusted) = %v, want 2", m)
	}
	if m := got[3].For(Tier(7)); m != 1 {
		t.Fatalf("For(unknown tier) = %v, want 1", m)
	}
	if m := (Bounty{}).For(TierTrusted); m != 1 {
		t.Fatalf("zero Bounty For = %v, want 1", m)
	}

	none := Bounties(nil, bc, tc)
	if none == nil || len(none) != 0 {
		t.Fatalf("Bounties(nil) = %#v, want empty non-nil", none)
	}
	js, err := json.Marshal(none)
	if err != nil || string(js) != "[]" {
		t.Fatalf("json of no bounties = %s, %v", js, err)
	}
	js, err = json.Marshal(got[3:])
	const wantJSON = `[{"model":"zeta","under_supply":1,"multipliers":{"established":1.5,"new":1,"trusted":2}}]`
	if err != nil || string(js) != wantJSON {
		t.Fatalf("json = %s, %v; want %s", js, err, wantJSON)
	}
}

// TestBountiesProperties checks, over random supply and demand, that the
// result is sorted by model, holds only under-supplied models, and that each
// tier's multiplier is within [1, MaxBounty] and rises with the tier.
func TestBountiesProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(0x5eed, 31))
	bc, tc := DefaultBountyConfig(), DefaultTrustConfig()
	for i := range 2_000 {
		sds := make([]SupplyDemand, r.IntN(20))
		for j := range sds {
			sds[j] = SupplyDemand{
				Model:    string(rune('a' + r.IntN(8))),
				Capacity: float64(r.IntN(20)), InFlight: float64(r.IntN(25)), Unserved: float64(r.IntN(3)),
			}
		}
		bs := Bounties(sds, bc, tc)
		if !slices.IsSortedFunc(bs, func(a, b Bounty) int { return strings.Compare(a.Model, b.Model) }) {
			t.Fatalf("iter %d: not sorted: %+v", i, bs)
		}
		for k, b := range bs {
			if k > 0 && bs[k-1].Model == b.Model {
				t.Fatalf("iter %d: model %q twice", i, b.Model)
			}
			if !(b.UnderSupply > 0 && b.UnderSupply <= 1) {
				t.Fatalf("iter %d: %+v: under-supply out of (0, 1]", i, b)
			}
			prev := 1.0
			for tier := range Tier(numTiers) {
				m := b.For(tier)
				if m < prev || m > tc.MaxBounty[tier] {
					t.Fatalf("iter %d: %+v: tier %v multiplier %v", i, b, tier, m)
				}
				prev = m
			}
		}
	}
}
