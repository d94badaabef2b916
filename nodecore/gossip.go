package nodecore

import (
	"errors"
	"math"
	"time"
)

// GossipBudget keeps the load topic's cost to each gateway bounded however
// large the network grows, the way RTCP keeps its control traffic to a
// fixed share of a session however many take part (RFC 3550 §6.2): every
// announcer spaces its announcements by
//
//	interval = announcers × CostEach / BytesPerSec
//
// so that all announcements together cost a gateway at most BytesPerSec,
// never closer than Min (the SPEC's "at most every second") nor further
// apart than Max. Liveness does not ride on it: membership and libp2p
// disconnects say when a node is gone (see p2p.Membership), so a quiet
// node is not a dead one.
type GossipBudget struct {
	BytesPerSec float64       // what the load topic may cost one gateway, bytes/s
	CostEach    float64       // what one announcement costs one gateway on the wire, duplicates and gossip control included, bytes
	Min         time.Duration // the shortest interval (no budget makes announcements more frequent)
	Max         time.Duration // the longest interval (past it the view cannot tell load from history)
}

// DefaultGossipBudget returns the budget nodes announce under.
func DefaultGossipBudget() GossipBudget {
	return GossipBudget{
		BytesPerSec: 40_000,           // the 50 KB/s per gateway, with a fifth kept for the health topic and bursts
		CostEach:    AnnouncementCost, // measured in the mesh simulation (docs/benchmarks.md)
		Min:         time.Second,      // SPEC: a node announces at most every second
		Max:         30 * time.Minute, // keeps the budget up to ~11,000 announcers; liveness is membership's, and the herd simulation routes as well on minutes-old load as on 1 s (docs/architecture.md)
	}
}

// AnnouncementCost is what one announcement cost each gateway in the
// 1,000-host mesh simulation (bytes received per gateway per announcement
// published: a 535-byte announcement arrives ~7.4 times, GossipSub's mesh
// degree, plus ~30 IHAVE ids; measured 6,491 B, docs/benchmarks.md).
const AnnouncementCost = 6500

// Validate reports a budget that cannot work.
func (b GossipBudget) Validate() error {
	if b.BytesPerSec <= 0 || b.CostEach <= 0 || b.Min <= 0 || b.Max < b.Min {
		return errors.New("nodecore: gossip budget needs positive bytes/s and cost, and 0 < min <= max")
	}
	return nil
}

// Interval is how far apart each of announcers should announce.
func (b GossipBudget) Interval(announcers int) time.Duration {
	n := max(announcers, 1)
	secs := float64(n) * b.CostEach / b.BytesPerSec
	if secs >= b.Max.Seconds() || math.IsInf(secs, 0) || math.IsNaN(secs) {
		return b.Max
	}
	return max(b.Min, time.Duration(secs*float64(time.Second)))
}

// BytesPerGateway is what announcers announcing every interval cost one
// gateway: the formula docs/architecture.md shows.
func (b GossipBudget) BytesPerGateway(announcers int, interval time.Duration) float64 {
	if interval <= 0 {
		return math.Inf(1)
	}
	return float64(announcers) * b.CostEach / interval.Seconds()
}
