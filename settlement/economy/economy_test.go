package economy

import (
	"errors"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"testing"
)

func TestCost(t *testing.T) {
	def := DefaultPriceTable().Default
	tests := []struct {
		name    string
		p       Price
		in, out int64
		want    int64
	}{
		{"zero tokens", def, 0, 0, 0},
		{"one input token rounds up", def, 1, 0, 1},
		{"one output token rounds up", def, 0, 1, 2},
		{"exact million", def, 1_000_000, 0, 1_000_000},
		{"both sides", def, 1_000_000, 500_000, 2_000_000},
		{"ceil of fraction", Price{InputPer1M: 3, OutputPer1M: 0}, 333_334, 0, 2}, // 1.000002 -> 2
		{"exactly one µcr", Price{InputPer1M: 3}, 333_333, 1, 1},                  // 0.999999 -> 1
		{"free model", Price{}, 123_456, 789, 0},
		{"negative tokens count as zero", def, -5, 1_000_000, 2_000_000},
		{"negative price counts as zero", Price{InputPer1M: -7, OutputPer1M: 1_000_000}, 10, 1_000_000, 1_000_000},
		{"overflowing intermediate", Price{InputPer1M: math.MaxInt64 / 2, OutputPer1M: 0}, 1_000_000, 0, math.MaxInt64 / 2},
		{"result beyond int64 clamps", Price{InputPer1M: math.MaxInt64, OutputPer1M: math.MaxInt64}, math.MaxInt64, math.MaxInt64, math.MaxInt64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Cost(tt.p, tt.in, tt.out); got != tt.want {
				t.Fatalf("Cost(%+v, %d, %d) = %d, want %d", tt.p, tt.in, tt.out, got, tt.want)
			}
		})
	}
}

// TestCostMatchesBigCeil checks Cost against an independent big.Rat ceiling
// over a grid of awkward values.
func TestCostMatchesBigCeil(t *testing.T) {
	vals := []int64{0, 1, 2, 3, 7, 999_999, 1_000_000, 1_000_001, 123_456_789, 1 << 31, 1 << 40}
	for _, pin := range vals {
		for _, pout := range vals {
			for _, in := range vals {
				for _, out := range []int64{0, 1, 7, 1_000_001, 1 << 40} {
					got := Cost(Price{pin, pout}, in, out)
					num := new(big.Int).Add(new(big.Int).Mul(big.NewInt(in), big.NewInt(pin)),
						new(big.Int).Mul(big.NewInt(out), big.NewInt(pout)))
					q, r := new(big.Int).QuoRem(num, big.NewInt(1_000_000), new(big.Int))
					if r.Sign() > 0 {
						q.Add(q, big.NewInt(1))
					}
					want := int64(math.MaxInt64)
					if q.IsInt64() {
						want = q.Int64()
					}
					if got != want {
						t.Fatalf("Cost(%d,%d,%d,%d) = %d, want %d", pin, pout, in, out, got, want)
					}
				}
			}
		}
	}
}

func TestSplitCost(t *testing.T) {
	tests := []struct {
		cost, bps      int64
		provider, plat int64
	}{
		{0, DefaultProviderBps, 0, 0},
		{1, DefaultProviderBps, 0, 1},
		{3, DefaultProviderBps, 2, 1},
		{7, DefaultProviderBps, 5, 2},
		{10, DefaultProviderBps, 8, 2},
		{1_000_000, DefaultProviderBps, 800_000, 200_000},
		{1_000_001, DefaultProviderBps, 800_000, 200_001},
		{5, 0, 0, 5},
		{5, 10_000, 5, 0},
		{5, 20_000, 5, 0}, // clamped to 100%
		{5, -1, 0, 5},     // clamped to 0%
		{math.MaxInt64, DefaultProviderBps, 7378697629483820645, 1844674407370955162},
	}
	for _, tt := range tests {
		got := SplitCost(tt.cost, tt.bps)
		if got.Provider != tt.provider || got.Platform != tt.plat {
			t.Errorf("SplitCost(%d, %d) = %+v, want {%d %d}", tt.cost, tt.bps, got, tt.provider, tt.plat)
		}
	}
}

func TestSplitCostSumsExactly(t *testing.T) {
	costs := []int64{0, 1, 2, 3, 7, 9, 11, 99, 101, 9_999, 10_001, 123_456_789,
		math.MaxInt64, math.MaxInt64 - 1, math.MaxInt64 / 3, -1, -7, math.MinInt64}
	for c := int64(0); c < 2_000; c++ {
		costs = append(costs, c)
	}
	for _, bps := range []int64{0, 1, 3333, DefaultProviderBps, 9999, 10_000} {
		for _, c := range costs {
			s := SplitCost(c, bps)
			if s.Provider+s.Platform != c {
				t.Fatalf("SplitCost(%d, %d) = %+v: sums to %d", c, bps, s, s.Provider+s.Platform)
			}
			if c >= 0 && (s.Provider < 0 || s.Platform < 0 || s.Provider > c) {
				t.Fatalf("SplitCost(%d, %d) = %+v: share out of range", c, bps, s)
			}
		}
	}
}

func TestPriceTableFor(t *testing.T) {
	tab := DefaultPriceTable()
	tab.Models["cheap"] = Price{InputPer1M: 1, OutputPer1M: 2}
	if got := tab.For("cheap"); got != (Price{1, 2}) {
		t.Fatalf("For(cheap) = %+v", got)
	}
	tab.Models["llama3.2:latest"] = Price{InputPer1M: 3, OutputPer1M: 4}
	if got := tab.For("llama3.2"); got != (Price{3, 4}) {
		t.Fatalf("an entry with Ollama's :latest tag does not price the model's network name: %+v", got)
	}
	if got := tab.For("unlisted"); got != tab.Default {
		t.Fatalf("For(unlisted) = %+v, want default %+v", got, tab.Default)
	}
	if d := DefaultPriceTable().Default; d.InputPer1M != 1_000_000 || d.OutputPer1M != 2_000_000 {
		t.Fatalf("default price = %+v", d)
	}
	var zero PriceTable
	if got := zero.For("x"); got != (Price{}) {
		t.Fatalf("zero table For = %+v", got)
	}
}

func TestLoadPriceTable(t *testing.T) {
	tests := []struct {
		name, file, content string
		wantErr             bool
		want                PriceTable
	}{
		{
			name: "json", file: "p.json",
			content: `{"default":{"input":10,"output":20},"models":{"llama":{"input":1,"output":2}}}`,
			want:    PriceTable{Default: Price{10, 20}, Models: map[string]Price{"llama": {1, 2}}},
		},
		{
			name: "yaml", file: "p.yaml",
			content: "default: {input: 10, output: 20}\nmodels:\n  llama: {input: 1, output: 2}\n  \"qwen/2\":\n    input: 3\n    output: 4\n",
			want:    PriceTable{Default: Price{10, 20}, Models: map[string]Price{"llama": {1, 2}, "qwen/2": {3, 4}}},
		},
		{
			name: "yml without default keeps built-in default", file: "p.yml",
			content: "models:\n  llama: {input: 1, output: 2}\n",
			want:    PriceTable{Default: DefaultPriceTable().Default, Models: map[string]Price{"llama": {1, 2}}},
		},
		{
			name: "empty json object", file: "p.JSON", content: `{}`,
			want: DefaultPriceTable(),
		},
		{name: "negative default", file: "p.json", content: `{"default":{"input":-1,"output":2}}`, wantErr: true},
		{name: "negative model price", file: "p.yaml", content: "models:\n  m: {input: 1, output: -2}\n", wantErr: true},
		{name: "empty model name", file: "p.json", content: `{"models":{"":{"input":1,"output":2}}}`, wantErr: true},
		{name: "malformed json", file: "p.json", content: `{"default":`, wantErr: true},
		{name: "malformed yaml", file: "p.yaml", content: "default: [1, 2", wantErr: true},
		{name: "float price", file: "p.json", content: `{"default":{"input":1.5,"output":2}}`, wantErr: true},
		{name: "unknown field", file: "p.json", content: `{"defualt":{"input":1,"output":2}}`, wantErr: true},
		{name: "unknown yaml field", file: "p.yaml", content: "modles: {}\n", wantErr: true},
		{name: "trailing json", file: "p.json", content: `{} {}`, wantErr: true},
		{name: "unknown extension", file: "p.toml", content: `default = 1`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), tt.file)
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := LoadPriceTable(path)
			if tt.wantErr {
				if !errors.Is(err, ErrBadPriceTable) {
					t.Fatalf("err = %v, want ErrBadPriceTable", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Default != tt.want.Default || len(got.Models) != len(tt.want.Models) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			for k, v := range tt.want.Models {
				if got.Models[k] != v {
					t.Fatalf("model %q = %+v, want %+v", k, got.Models[k], v)
				}
			}
		})
	}
	if _, err := LoadPriceTable(filepath.Join(t.TempDir(), "missing.json")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: err = %v, want ErrNotExist", err)
	}
}

func TestFormatCredits(t *testing.T) {
	tests := []struct {
		ucr  int64
		want string
	}{
		{0, "0.000000"},
		{1, "0.000001"},
		{4_999_980, "4.999980"},
		{StartingCreditUcr, "5.000000"},
		{-1, "-0.000001"},
		{-12_345_678, "-12.345678"},
		{math.MaxInt64, "9223372036854.775807"},
		{math.MinInt64, "-9223372036854.775808"},
	}
	for _, tt := range tests {
		if got := FormatCredits(tt.ucr); got != tt.want {
			t.Errorf("FormatCredits(%d) = %q, want %q", tt.ucr, got, tt.want)
		}
	}
}
