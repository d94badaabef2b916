package route

import (
	"math/rand/v2"
	"testing"
)

func TestPickLeastLoaded(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	cases := []struct {
		name  string
		cands []Candidate
		want  int
	}{
		{"empty", nil, -1},
		{"all full", []Candidate{{Capacity: 2, InFlight: 2}, {Capacity: 1, Local: 1}}, -1},
		{"zero capacity", []Candidate{{Capacity: 0}}, -1},
		{"idle beats busy", []Candidate{{Capacity: 4, InFlight: 2}, {Capacity: 4}}, 1},
		{"local calls count", []Candidate{{Capacity: 4, Local: 3}, {Capacity: 4, InFlight: 1}}, 1},
		{"excluded skipped", []Candidate{{Capacity: 4, Excluded: true}, {Capacity: 4, InFlight: 3}}, 1},
		{"negative counters clamp", []Candidate{{Capacity: 4, InFlight: -5}, {Capacity: 4, InFlight: 1}}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for range 50 {
				if got := Pick(tc.cands, DefaultTieBand, r); got != tc.want {
					t.Fatalf("Pick = %d, want %d", got, tc.want)
				}
			}
		})
	}
}

// Ties must not go to the first listed instance (LiteLLM's 93.7% bug).
func TestPickTiesShareEvenly(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	cands := make([]Candidate, 4)
	for i := range cands {
		cands[i] = Candidate{Capacity: 8}
	}
	counts := make([]int, len(cands))
	const n = 40000
	for range n {
		counts[Pick(cands, DefaultTieBand, r)]++
	}
	for i, c := range counts {
		if share := float64(c) / n; share < 0.23 || share > 0.27 {
			t.Fatalf("candidate %d got %.3f of ties, want ~0.25 (%v)", i, share, counts)
		}
	}
}

func TestPickHealthWeights(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	cands := []Candidate{{Capacity: 8, Health: 1}, {Capacity: 8, Health: 3}}
	var second int
	const n = 40000
	for range n {
		if Pick(cands, DefaultTieBand, r) == 1 {
			second++
		}
	}
	if share := float64(second) / n; share < 0.72 || share > 0.78 {
		t.Fatalf("health-3 candidate got %.3f, want ~0.75", share)
	}
}
