package gateway

import (
	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// What GET /v1/models lists and what a call is routed to answer from one
// predicate, route.Table.Routable: a model is listed iff a call to it is
// routed now or refused only for the moment (every instance full, parked
// or away: 503 no_capacity, retry shortly). A model whose every instance
// is under the floor, or gone (membership says dead, silent past its
// announcements, refused), is neither listed nor routed: its calls get
// 404 model_not_found. Listed and HasModel read the same tables under the
// same lock, so a model is never listed and then refused as unknown
// unless the network changed in between; a node that only cannot be
// reached for now (its connection closed, membership suspects it) leaves
// the candidates at once but does not make its model unknown.

// Listed is what GET /v1/models shows: every model HasModel accepts,
// with the instances that make it so (route.Info.Routable), sorted by id.
func (v *View) Listed() []ModelInfo {
	all := v.Models()
	out := all[:0]
	for _, m := range all {
		kept := m.Instances[:0]
		for _, in := range m.Instances {
			if in.Routable {
				kept = append(kept, in)
			}
		}
		if len(kept) > 0 {
			m.Instances = kept
			out = append(out, m)
		}
	}
	return out
}

// awayLoad is the load of an instance whose node cannot be reached now
// (View.Unreachable): no candidate, yet its model stays listed until the
// node announces again or is gone.
func awayLoad(m p2p.ModelLoad, a *p2p.Announcement) route.Load {
	return route.Load{Declared: float64(m.Capacity), Away: true, TokPerSec: a.TokPerSec}
}
