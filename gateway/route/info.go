package route

import "time"

// Info is what the table knows of one instance, for /v1/models and the
// gateway's debug endpoint.
type Info struct {
	ID        string  `json:"id"`
	State     string  `json:"state"`   // closed, parked, half-open, probing, below-floor
	Breaker   string  `json:"breaker"` // closed, open, half-open
	Candidate bool    `json:"candidate"`
	Routable  bool    `json:"routable"`    // a candidate, or merely full, parked or away: its model is listed (Table.Routable)
	Away      bool    `json:"unreachable"` // cannot be reached now (Load.Away)
	Spare     float64 `json:"spare_capacity"`
	Capacity  float64 `json:"effective_capacity"`
	Declared  float64 `json:"-"`                 // declared capacity (the gateway shows the announced one)
	Spill     bool    `json:"spill"`             // a candidate only for its declared headroom: every instance is at its ramped capacity
	InFlight  int     `json:"in_flight"`         // per its last announcement
	Local     int     `json:"gateway_in_flight"` // this gateway's calls
	TokPerSec float64 `json:"tok_s"`             // measured here, else the node's claim
	Measured  bool    `json:"tok_s_measured"`    // TokPerSec was measured by this gateway
	Weight    float64 `json:"health_weight"`     // tie weight in (0,1]
	UntilMs   int64   `json:"until_ms,omitempty"`
}

// Info describes h at now.
func (t *Table) Info(h Handle, now time.Time) (Info, bool) {
	t.advance(now.UnixNano())
	in := t.get(h)
	if in == nil {
		return Info{}, false
	}
	i := Info{
		ID: in.id, State: in.state.String(), Breaker: in.state.Breaker(),
		Candidate: in.level >= 0, Routable: in.routable(), Away: in.away, Spare: in.spare(), Capacity: in.capacity,
		Declared: in.declared, Spill: in.level >= 0 && in.set == spill,
		InFlight: in.gossip, Local: in.local, TokPerSec: in.claimed,
		Weight: float64(in.weight) / MaxWeight,
	}
	if in.samples > 0 {
		i.TokPerSec, i.Measured = in.rate, true
	}
	if in.state == Parked || in.state == BelowFloor {
		i.UntilMs = in.until / int64(time.Millisecond)
	}
	return i, true
}

// Candidates is the number of instances Pick could choose now.
func (t *Table) Candidates(now time.Time) int {
	t.advance(now.UnixNano())
	n := 0
	for i := range t.sets {
		for _, b := range t.sets[i].buckets {
			n += len(b)
		}
	}
	return n
}

// Handles lists every instance's handle.
func (t *Table) Handles() []Handle {
	out := make([]Handle, 0, len(t.byID))
	for _, h := range t.byID {
		out = append(out, h)
	}
	return out
}
