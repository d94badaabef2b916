// Package route is the gateway's routing policy as pure code: it takes the
// candidates, their load and a random source and returns a choice. It does
// no I/O and reads no clock, so the simulator runs the very same code.
//
// This is the Step 1 policy: least-loaded by spare capacity with random
// tie-breaks weighted by health. The floor, breaker and ramp-up arrive with
// the routing step (SPEC §4).
package route

import "math/rand/v2"

// Candidate is one instance (a model on a node) as the gateway sees it.
type Candidate struct {
	ID       string  // instance id, for the caller's bookkeeping
	Capacity int     // effective capacity: concurrent calls it takes
	InFlight int     // calls in flight per its last announcement
	Local    int     // calls this gateway has in flight to it
	Health   float64 // tie-break weight; <= 0 counts as 1
	Excluded bool    // already tried for this call
}

// Spare is 1 - in_flight/capacity, with the gateway's own calls added to the
// gossiped in-flight count; an instance with no capacity has none to spare.
func (c *Candidate) Spare() float64 {
	if c.Capacity <= 0 {
		return 0
	}
	busy := max(c.InFlight, 0) + max(c.Local, 0)
	return 1 - float64(busy)/float64(c.Capacity)
}

// DefaultTieBand is how close to the best spare capacity a candidate must be
// to share the tie: 5% of capacity, so an idle node and one with a call in
// flight out of 40 are equal, but not one with 3 of 10.
const DefaultTieBand = 0.05

// Pick returns the index of the chosen candidate, or -1 when none has spare
// capacity. Candidates within band of the best spare capacity are drawn at
// random, weighted by health, so list order never matters.
func Pick(cands []Candidate, band float64, r *rand.Rand) int {
	best := 0.0
	found := false
	for i := range cands {
		c := &cands[i]
		if c.Excluded {
			continue
		}
		if s := c.Spare(); s > 0 && (!found || s > best) {
			best, found = s, true
		}
	}
	if !found {
		return -1
	}
	total := 0.0
	for i := range cands {
		c := &cands[i]
		if !c.Excluded && c.Spare() >= best-band {
			total += weight(c)
		}
	}
	x := r.Float64() * total
	last := -1
	for i := range cands {
		c := &cands[i]
		if c.Excluded || c.Spare() < best-band {
			continue
		}
		last = i
		x -= weight(c)
		if x < 0 {
			return i
		}
	}
	return last // floating-point remainder: the last in the band
}

func weight(c *Candidate) float64 {
	if c.Health <= 0 {
		return 1
	}
	return c.Health
}
