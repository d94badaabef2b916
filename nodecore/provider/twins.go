package provider

import (
	"context"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/tokenrouter/tokenrouter/p2p"
)

const (
	// gossipSilence: no health report on gossip for this long (they come
	// every 5 s) means this node's gossip is cut off.
	gossipSilence = 15 * time.Second
	// refusedPoll is how often a refused node, or one cut off from gossip,
	// asks the settlement peer for its refusals directly.
	refusedPoll = 5 * time.Second
	silentPoll  = 30 * time.Second
)

// watchRefusals follows the settlement peer's health reports and tells
// the operator, once when it starts and once when it ends, that the
// network refuses this node, and why: typically another machine runs with
// a copy of this node's identity key. (GossipSub drops messages that claim
// to come from this host's own peer id, so the node cannot see its twin's
// announcements itself; the platform sees both.)
//
// Two hosts behind one peer id also starve each other's gossip: GossipSub
// keeps one stream per peer id and gives up on a peer after a few resets.
// So a refused node, or one that hears no report on gossip, asks the
// settlement peer directly, and when its refusal ends (its twin stopped)
// or its gossip stays silent it reconnects to its non-gateway peers, which
// starts GossipSub afresh with them.
func (n *Node) watchRefusals(ctx context.Context) {
	reports := make(chan *p2p.HealthReport, 8)
	if topic, err := p2p.JoinHealthTopic(n.cfg.Host, n.cfg.Platform, nil); err != nil {
		n.log.Warn("cannot follow the settlement peer's health reports", "err", err)
	} else if sub, err := topic.Subscribe(); err != nil {
		n.log.Warn("cannot follow the settlement peer's health reports", "err", err)
	} else {
		done := make(chan struct{})
		defer func() { <-done }()
		go func() {
			defer close(done)
			followReports(ctx, sub, reports)
		}()
	}
	w := refusalWatch{n: n, self: n.cfg.Host.IDString(), lastGossip: time.Now()}
	t := time.NewTicker(refusedPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-reports:
			w.lastGossip = time.Now()
			if w.take(r) {
				w.reconnect(ctx)
			}
		case now := <-t.C:
			silent := now.Sub(w.lastGossip) >= gossipSilence
			if !w.refused && !(silent && now.Sub(w.lastPoll) >= silentPoll) {
				continue
			}
			w.lastPoll = now
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			resp, err := n.cfg.Host.CallSettle(cctx, n.cfg.Platform, &p2p.SettleRequest{Op: p2p.OpScores})
			cancel()
			if err != nil || resp.Health == nil {
				continue // the settlement peer is away: nothing wrong with this node's gossip
			}
			cleared := w.take(resp.Health)
			// Reachable, yet silent on gossip: this node's gossip is cut off.
			if cleared || (silent && !w.refused && now.Sub(w.lastReset) >= silentPoll) {
				w.reconnect(ctx)
			}
		}
	}
}

func followReports(ctx context.Context, sub *pubsub.Subscription, out chan<- *p2p.HealthReport) {
	defer sub.Cancel()
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			return
		}
		if r, ok := msg.ValidatorData.(*p2p.HealthReport); ok {
			select {
			case out <- r:
			default:
			}
		}
	}
}

type refusalWatch struct {
	n                               *Node
	self                            string
	refused                         bool
	lastGossip, lastPoll, lastReset time.Time
}

// take reads a report; it logs a refusal that starts or ends and reports
// whether one ended.
func (w *refusalWatch) take(r *p2p.HealthReport) (cleared bool) {
	var mine *p2p.Refusal
	for i := range r.Refused {
		if r.Refused[i].Node == w.self {
			mine = &r.Refused[i]
			break
		}
	}
	switch {
	case mine != nil && !w.refused:
		w.refused = true
		w.n.logRefused(mine)
	case mine == nil && w.refused:
		w.refused = false
		w.n.log.Warn("the network routes to this node again: only one host announces its peer id now", "peer", w.self)
		return true
	}
	return false
}

// reconnect closes this node's connections that carry no inference
// stream (bootstrap peers, the settlement peer, idle gateways); they are
// dialled again and GossipSub starts afresh with each.
func (w *refusalWatch) reconnect(ctx context.Context) {
	w.lastReset = time.Now()
	h := w.n.cfg.Host
	closed := 0
	for _, c := range h.Network().Conns() {
		busy := false
		for _, s := range c.GetStreams() {
			if s.Protocol() == p2p.ProtoInfer {
				busy = true
				break
			}
		}
		if !busy {
			c.Close()
			closed++
		}
	}
	w.n.log.Info("reconnecting to peers to restart gossip", "closed", closed)
	// The settlement peer is dialled again by the next call; dial it now so
	// health reports and announcements flow at once.
	if h.Network().Connectedness(w.n.cfg.Platform) != network.Connected {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		h.Connect(cctx, h.Peerstore().PeerInfo(w.n.cfg.Platform))
		cancel()
	}
}

func (n *Node) logRefused(r *p2p.Refusal) {
	switch r.Status {
	case p2p.RefusedDuplicateIdentity:
		n.log.Warn("the network refuses this node: another host announces the same peer id (a copied identity key); gateways route to neither",
			"peer", r.Node, "reason", r.Reason,
			"fix", "give each machine its own data directory (--data) and so its own "+p2p.IdentityFile+"; never copy "+p2p.IdentityFile+" between machines; stop the copy, or delete its "+p2p.IdentityFile+" so it creates a new identity")
	default:
		n.log.Warn("the network refuses this node", "peer", r.Node, "status", r.Status, "reason", r.Reason)
	}
}
