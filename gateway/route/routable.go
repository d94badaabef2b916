package route

import "time"

// Routable reports whether a call for this table's model is routed now,
// or refused only for the moment: some instance is a candidate, or is
// merely full, parked, probing or away (Load.Away: unreachable for now,
// not known gone), so the call gets SPEC §3's 503 no_capacity, retry
// shortly. It is false when no instance could take a call as things
// stand: the table is empty, or every instance is under the floor or has
// no declared capacity at all.
//
// The gateway lists a model in /v1/models iff this holds and answers a
// call to it 404 model_not_found iff it does not, so a listed model is
// never refused as unknown. Without a candidate it looks at every
// instance; with one (the usual case) it returns at once.
func (t *Table) Routable(now time.Time) bool {
	t.advance(now.UnixNano())
	for i := range t.sets {
		if t.sets[i].highest() >= 0 {
			return true
		}
	}
	for i := range t.insts {
		if t.insts[i].routable() {
			return true
		}
	}
	return false
}

// routable reports whether in takes calls, or will once it has room, its
// park is over or it is reachable again.
func (in *instance) routable() bool {
	return in.live && in.state != BelowFloor && in.declared > 0
}
