package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// Membership (p2p.Membership, SWIM failure detection) takes a node out of
// the candidates as soon as this gateway learns it is suspect, dead or
// gone, within 3 s of a crash (p2p.MembershipConfig says how), where the
// announcement timeout would take two heartbeats.
//
//   - Suspect: its instances get no capacity (Unreachable). A suspect that
//     is alive refutes within a probe or two; membership then says Alive
//     and its last announcement applies again.
//   - Dead or Left: its instances leave the tables, and stay out whatever
//     announces for it (a straggler published before it died) until
//     membership says Alive again (it restarted and rejoined).

// memberGoneTTL is how long the view keeps a dead node out of the tables
// against announcements: longer than any announcement can take to arrive
// (GossipSub's seen cache is 2 min, validators drop any older than 10 s).
const memberGoneTTL = 2 * time.Minute

// memberGate is the view's record of what membership said; guarded by
// View.mu. The zero value is ready.
type memberGate struct {
	gone      map[peer.ID]time.Time // dead or left, since
	suspected map[peer.ID]bool      // suspect now
}

// blocks reports whether id's announcements must stay out of the tables.
func (g *memberGate) blocks(id peer.ID) bool {
	_, ok := g.gone[id]
	return ok
}

func (g *memberGate) markGone(id peer.ID, now time.Time) {
	if g.gone == nil {
		g.gone = map[peer.ID]time.Time{}
	}
	for other, since := range g.gone {
		if now.Sub(since) > memberGoneTTL {
			delete(g.gone, other)
		}
	}
	g.gone[id] = now
	delete(g.suspected, id)
}

func (g *memberGate) markSuspect(id peer.ID) {
	if g.suspected == nil {
		g.suspected = map[peer.ID]bool{}
	}
	g.suspected[id] = true
}

// markAlive clears id and reports whether membership had taken it out.
func (g *memberGate) markAlive(id peer.ID) bool {
	_, gone := g.gone[id]
	was := gone || g.suspected[id]
	delete(g.gone, id)
	delete(g.suspected, id)
	return was
}

// followMembers applies the host's membership events to the view until
// ctx ends; nothing when the host runs no membership.
func (v *View) followMembers(ctx context.Context, h *p2p.Host, wg *sync.WaitGroup) {
	if h.Members == nil {
		return
	}
	events, cancel := h.Members.Subscribe()
	wg.Go(func() {
		defer cancel()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-events:
				if !ok {
					return
				}
				if e.State == p2p.MemberSuspect || e.State == p2p.MemberDead {
					// A second opinion first, off this loop (see secondOpinion).
					wg.Go(func() { v.unlessAnswers(ctx, h, e) })
					continue
				}
				v.MemberChanged(e)
			}
		}
	})
}

// MemberChanged applies one membership event (see the top of members.go).
func (v *View) MemberChanged(e p2p.MemberEvent) {
	switch e.State {
	case p2p.MemberSuspect:
		v.Unreachable(e.Peer)
		v.mu.Lock()
		v.members.markSuspect(e.Peer)
		v.mu.Unlock()
	case p2p.MemberDead, p2p.MemberLeft:
		v.memberGone(e.Peer)
	case p2p.MemberAlive:
		v.memberAlive(e.Peer)
	}
}

// memberGone takes id's instances out of every table and keeps them out.
func (v *View) memberGone(id peer.ID) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.members.markGone(id, v.now())
	if e := v.nodes[id]; e != nil {
		for _, m := range e.ann.Models {
			v.removeInstance(id, m.Model)
		}
	}
	v.log.Info("membership: node gone, out of the candidates", "node", id.String())
}

// memberAlive lets id back: its last announcement, if still fresh and the
// node is not refused, applies again.
func (v *View) memberAlive(id peer.ID) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.members.markAlive(id) {
		return
	}
	now := v.now()
	e := v.nodes[id]
	if _, refused := v.refused[id]; refused || e == nil || !v.fresh(e, now) {
		return
	}
	e.down = false // it refuted or rejoined: alive, whatever closed before
	for _, m := range e.ann.Models {
		v.apply(id, m, &e.ann, now)
	}
}

// secondOpinion bounds the ping a gateway sends a node membership says is
// suspect or dead before believing it. SWIM's probers are other peers: on a
// loaded machine (or behind a congested link of theirs) a healthy node
// misses their probes, and treating every suspicion as fact would turn a
// prober's hiccup into refused calls. A gateway connected to the node asks
// it directly: an answer within this keeps it routed; no connection, or no
// answer, and the suspicion stands. A dead node costs at most this much
// more on the way out (3 s p99 budget: detection is ~2.6 s at 1,000 peers
// on a 50 ms network, and a dead node's connection usually closes first).
const secondOpinion = 400 * time.Millisecond

// unlessAnswers applies e unless the node, still connected, answers a ping.
func (v *View) unlessAnswers(ctx context.Context, h *p2p.Host, e p2p.MemberEvent) {
	if h.Network().Connectedness(e.Peer) == network.Connected {
		pctx, cancel := context.WithTimeout(ctx, secondOpinion)
		r, ok := <-ping.Ping(pctx, h, e.Peer)
		cancel()
		if ok && r.Error == nil {
			v.log.Debug("membership: a suspected node answers this gateway; keeping it", "node", e.Peer.String(), "state", e.State.String(), "rtt", r.RTT)
			return
		}
	}
	if h.Members.State(e.Peer) != e.State {
		return // it refuted (or died) meanwhile: that event applies instead
	}
	v.MemberChanged(e)
}
