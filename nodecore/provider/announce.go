package provider

import (
	"context"
	"encoding/json"
	"maps"
	"time"

	"github.com/tokenrouter/tokenrouter/p2p"
)

// announceLoop publishes the node's load on change and at least every
// heartbeat, within the gossip budget (nodecore.GossipBudget): as the
// network grows, announcements space out so the load topic costs each
// gateway a bounded number of bytes a second.
func (n *Node) announceLoop(ctx context.Context) {
	refusals := make(chan struct{})
	go func() { defer close(refusals); n.watchRefusals(ctx) }()
	defer func() { <-refusals }()
	var p pacer
	pace, heartbeat := n.announceEvery()
	n.publish(ctx, heartbeat)
	p.sent(time.Now(), pace)
	timer := time.NewTimer(heartbeat)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-n.changed:
			timer.Stop()
		}
		pace, heartbeat = n.announceEvery()
		if wait := p.wait(time.Now(), n.cfg.Announce, pace); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		n.publish(ctx, heartbeat)
		p.sent(time.Now(), pace)
		timer.Reset(heartbeat)
	}
}

// announceEvery is the average spacing the gossip budget allows this node
// now (pace) and the longest it stays silent (heartbeat, announced).
func (n *Node) announceEvery() (pace, heartbeat time.Duration) {
	members := 1
	if n.cfg.Members != nil {
		members = n.cfg.Members()
	} else if m := n.cfg.Host.Members; m != nil {
		members = m.NumMembers()
	}
	pace = max(n.cfg.Announce, n.cfg.Gossip.Interval(members))
	return pace, max(n.cfg.Heartbeat, pace)
}

// Announcement is the node's current announcement (without a sequence number).
func (n *Node) Announcement() p2p.Announcement {
	n.mu.Lock()
	defer n.mu.Unlock()
	a := p2p.Announcement{
		Node:      n.cfg.Host.ID().String(),
		Platform:  n.cfg.Platform.String(),
		Addrs:     n.cfg.Host.FullAddrs(),
		Hardware:  n.cfg.Hardware,
		Synthetic: n.cfg.Synthetic,
		TokPerSec: n.tokPerS,
		TimeMs:    time.Now().UnixMilli(),
	}
	for _, m := range n.models {
		in := n.instances[m]
		capacity := in.capacity
		if n.cfg.MaxInFlight > 0 {
			// The node-wide cap is shared: a model can take at most what
			// the other models leave of it (and says at least one, or
			// what it holds, so its load reads as full, not as absent).
			capacity = max(min(capacity, n.cfg.MaxInFlight-(n.inFlight-in.inFlight)), in.inFlight, 1)
		}
		ml := p2p.ModelLoad{Model: m, Capacity: capacity, InFlight: in.inFlight}
		if len(in.byPeer) > 0 {
			ml.InFlightBy = maps.Clone(in.byPeer)
		}
		a.Models = append(a.Models, ml)
	}
	return a
}

func (n *Node) publish(ctx context.Context, every time.Duration) {
	a := n.Announcement()
	a.EveryMs = every.Milliseconds()
	n.mu.Lock()
	n.seq++
	a.Seq = n.seq
	n.mu.Unlock()
	data, err := json.Marshal(a)
	if err != nil {
		n.log.Error("announce: marshal", "err", err)
		return
	}
	err = n.topic.Publish(ctx, data)
	if ctx.Err() != nil {
		return // stopping: not a failure to count or tell
	}
	n.metrics.announced(err)
	if err != nil {
		n.log.Warn("announce: publish", "err", err)
	}
}
