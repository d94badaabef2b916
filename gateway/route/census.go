package route

import "time"

// Census counts a table's instances by where they stand: for an
// operator's metrics, and to say why Pick found no candidate.
type Census struct {
	Instances  int
	Candidates int            // Pick could choose them now (tried ones included)
	States     [numStates]int // by State
	Away       int            // closed or half-open, but cannot be reached now
	Full       int            // closed or half-open and reachable, its declared capacity all taken
}

const numStates = int(BelowFloor) + 1

// Census counts t's instances at now.
func (t *Table) Census(now time.Time) Census {
	t.advance(now.UnixNano())
	var c Census
	for i := range t.insts {
		in := &t.insts[i]
		if !in.live {
			continue
		}
		c.Instances++
		c.States[in.state]++
		switch {
		case in.level >= 0:
			c.Candidates++
		case in.state != Closed && in.state != HalfOpen:
		case in.away:
			c.Away++
		case in.declared > 0:
			c.Full++
		}
	}
	return c
}

// Add adds o's counts to c (a census of several tables).
func (c *Census) Add(o Census) {
	c.Instances += o.Instances
	c.Candidates += o.Candidates
	for i := range c.States {
		c.States[i] += o.States[i]
	}
	c.Away += o.Away
	c.Full += o.Full
}

// Breakers counts the instances by breaker state: closed (a below-floor
// instance's breaker is closed), open (parked) and half-open (its probe
// due or in flight).
func (c Census) Breakers() (closed, open, halfOpen int) {
	return c.States[Closed] + c.States[BelowFloor], c.States[Parked], c.States[HalfOpen] + c.States[Probing]
}

// Why Pick found no candidate, as Census.NoPick says it.
const (
	NoPickNoInstance = "no_instance"  // the model has no instance at all
	NoPickAllTried   = "all_tried"    // every candidate was already tried for this call
	NoPickFull       = "full"         // reachable instances have no capacity to spare
	NoPickBreaker    = "breaker_open" // instances are parked, or their one probe is in flight
	NoPickAway       = "unreachable"  // instances cannot be reached now
	NoPickBelowFloor = "below_floor"  // instances are under the throughput floor
	NoPickNoCapacity = "no_capacity"  // instances declare no capacity at all
)

// NoPick says why Pick, right after this census was taken, found no
// candidate: the commonest hindrance wins, the first listed on a tie.
func (c Census) NoPick() string {
	if c.Instances == 0 {
		return NoPickNoInstance
	}
	if c.Candidates > 0 {
		return NoPickAllTried // Pick had candidates but was told to skip them
	}
	best, n := NoPickNoCapacity, 0
	for _, r := range []struct {
		reason string
		n      int
	}{
		{NoPickFull, c.Full},
		{NoPickBreaker, c.States[Parked] + c.States[Probing]},
		{NoPickAway, c.Away},
		{NoPickBelowFloor, c.States[BelowFloor]},
	} {
		if r.n > n {
			best, n = r.reason, r.n
		}
	}
	return best
}
