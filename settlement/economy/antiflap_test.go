package economy

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestDefaultFlapConfig(t *testing.T) {
	c := DefaultFlapConfig()
	if c.Cut != 0.5 || c.Decay != 72*time.Hour {
		t.Fatalf("DefaultFlapConfig() = %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestFlapConfigValidate(t *testing.T) {
	tests := []struct {
		c  FlapConfig
		ok bool
	}{
		{FlapConfig{}, true},
		{FlapConfig{Cut: 1, Decay: time.Hour}, true},
		{FlapConfig{Cut: -0.1, Decay: time.Hour}, false},
		{FlapConfig{Cut: 1.1, Decay: time.Hour}, false},
		{FlapConfig{Cut: math.NaN(), Decay: time.Hour}, false},
		{FlapConfig{Cut: 0.5, Decay: -time.Second}, false},
	}
	for _, tt := range tests {
		err := tt.c.Validate()
		if tt.ok != (err == nil) || (err != nil && !errors.Is(err, ErrBadConfig)) {
			t.Errorf("%+v.Validate() = %v, want ok=%v", tt.c, err, tt.ok)
		}
	}
}

func TestFlapFactor(t *testing.T) {
	def := DefaultFlapConfig()
	sw := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		c          FlapConfig
		switchedAt time.Time
		now        time.Time
		want       float64
	}{
		{"never switched", def, time.Time{}, sw, 1},
		{"right after switch", def, sw, sw, 0.5},
		{"clock skew counts as just switched", def, sw, sw.Add(-time.Hour), 0.5},
		{"a quarter through", def, sw, sw.Add(18 * time.Hour), 0.625},
		{"half way", def, sw, sw.Add(36 * time.Hour), 0.75},
		{"just before the end", def, sw, sw.Add(72*time.Hour - time.Nanosecond), 0.5 + 0.5*float64(72*time.Hour-1)/float64(72*time.Hour)},
		{"decayed", def, sw, sw.Add(72 * time.Hour), 1},
		{"long ago", def, sw, sw.Add(365 * 24 * time.Hour), 1},
		{"zero decay has no effect", FlapConfig{Cut: 0.5}, sw, sw, 1},
		{"negative decay has no effect", FlapConfig{Cut: 0.5, Decay: -time.Hour}, sw, sw, 1},
		{"NaN cut has no effect", FlapConfig{Cut: math.NaN(), Decay: time.Hour}, sw, sw, 1},
		{"zero cut", FlapConfig{Cut: 0, Decay: 10 * time.Hour}, sw, sw.Add(time.Hour), 0.1},
		{"negative cut clamps to 0", FlapConfig{Cut: -1, Decay: 10 * time.Hour}, sw, sw, 0},
		{"cut above 1 clamps to 1", FlapConfig{Cut: 2, Decay: 10 * time.Hour}, sw, sw, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.c.FlapFactor(tt.switchedAt, tt.now); math.Abs(got-tt.want) > 1e-12 {
				t.Fatalf("FlapFactor = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestFlapFactorProperties checks that the factor stays in [Cut, 1] and never
// falls as time passes.
func TestFlapFactorProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(0x5eed, 10))
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 50_000 {
		c := FlapConfig{Cut: r.Float64(), Decay: time.Duration(1 + r.Int64N(int64(200*time.Hour)))}
		sw := base.Add(time.Duration(r.Int64N(int64(1000 * time.Hour))))
		t1 := sw.Add(time.Duration(r.Int64N(int64(300*time.Hour))) - 10*time.Hour)
		t2 := t1.Add(time.Duration(r.Int64N(int64(100 * time.Hour))))
		f1, f2 := c.FlapFactor(sw, t1), c.FlapFactor(sw, t2)
		if f1 < c.Cut || f1 > 1 || f2 < c.Cut || f2 > 1 || f2 < f1 {
			t.Fatalf("iter %d: %+v switched %v: factor %v at %v, %v at %v", i, c, sw, f1, t1, f2, t2)
		}
		if t1.Sub(sw) >= c.Decay && f1 != 1 {
			t.Fatalf("iter %d: %+v: factor %v after decay", i, c, f1)
		}
	}
}
