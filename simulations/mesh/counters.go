package mesh

import (
	"strings"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Protocol classes the byte counter keeps apart.
const (
	classGossip = iota // GossipSub (/meshsub/...)
	classMember        // the membership layer (/tokenrouter/member...)
	classOther         // identify, ping and the rest
	numClasses
)

func classOf(p protocol.ID) int {
	switch s := string(p); {
	case strings.HasPrefix(s, "/meshsub/"):
		return classGossip
	case strings.Contains(s, "member"), strings.Contains(s, "/swim/"):
		return classMember
	}
	return classOther
}

// byteCounter is a libp2p bandwidth reporter (libp2p.BandwidthReporter)
// that counts stream bytes exactly, by protocol class. It is hooked where
// libp2p's own metrics.BandwidthCounter is (every stream read and write),
// but the BandwidthCounter's totals are updated by a sweeper on the wall
// clock, which under synctest's virtual time would read at arbitrary
// moments; atomics read exactly when asked.
type byteCounter struct {
	in, out [numClasses]atomic.Int64
}

var _ metrics.Reporter = (*byteCounter)(nil)

// traffic is a snapshot of a byteCounter.
type traffic struct {
	in, out [numClasses]int64
}

func (c *byteCounter) snapshot() traffic {
	var t traffic
	for i := range numClasses {
		t.in[i], t.out[i] = c.in[i].Load(), c.out[i].Load()
	}
	return t
}

func (t traffic) minus(u traffic) traffic {
	for i := range numClasses {
		t.in[i] -= u.in[i]
		t.out[i] -= u.out[i]
	}
	return t
}

func (t traffic) total() (in, out int64) {
	for i := range numClasses {
		in += t.in[i]
		out += t.out[i]
	}
	return in, out
}

func (c *byteCounter) LogSentMessage(int64) {}
func (c *byteCounter) LogRecvMessage(int64) {}
func (c *byteCounter) LogSentMessageStream(n int64, p protocol.ID, _ peer.ID) {
	c.out[classOf(p)].Add(n)
}
func (c *byteCounter) LogRecvMessageStream(n int64, p protocol.ID, _ peer.ID) {
	c.in[classOf(p)].Add(n)
}
func (c *byteCounter) GetBandwidthForPeer(peer.ID) metrics.Stats         { return metrics.Stats{} }
func (c *byteCounter) GetBandwidthForProtocol(protocol.ID) metrics.Stats { return metrics.Stats{} }
func (c *byteCounter) GetBandwidthTotals() metrics.Stats {
	in, out := c.snapshot().total()
	return metrics.Stats{TotalIn: in, TotalOut: out}
}
func (c *byteCounter) GetBandwidthByPeer() map[peer.ID]metrics.Stats { return nil }
func (c *byteCounter) GetBandwidthByProtocol() map[protocol.ID]metrics.Stats {
	return nil
}
func (c *byteCounter) Reset()             {}
func (c *byteCounter) TrimIdle(time.Time) {}

// gossipCounter counts what GossipSub does on one host (a raw tracer):
// messages received in RPCs (first copies and duplicates), delivered,
// rejected or ignored by the validator, and RPCs dropped on full queues.
type gossipCounter struct {
	rpcMessages atomic.Int64 // messages carried by received RPCs, duplicates included
	ihave       atomic.Int64 // message ids offered by IHAVE
	iwant       atomic.Int64 // message ids asked for by IWANT
	delivered   atomic.Int64
	duplicates  atomic.Int64
	rejected    atomic.Int64
	dropped     atomic.Int64 // outbound RPCs dropped (full peer queue)
	grafts      atomic.Int64
	prunes      atomic.Int64
}

// gossipCounts is a snapshot of a gossipCounter.
type gossipCounts struct {
	rpcMessages, ihave, iwant, delivered, duplicates, rejected, dropped, grafts, prunes int64
}

func (g *gossipCounter) snapshot() gossipCounts {
	return gossipCounts{
		g.rpcMessages.Load(), g.ihave.Load(), g.iwant.Load(), g.delivered.Load(), g.duplicates.Load(),
		g.rejected.Load(), g.dropped.Load(), g.grafts.Load(), g.prunes.Load(),
	}
}

func (a gossipCounts) minus(b gossipCounts) gossipCounts {
	return gossipCounts{
		a.rpcMessages - b.rpcMessages, a.ihave - b.ihave, a.iwant - b.iwant, a.delivered - b.delivered,
		a.duplicates - b.duplicates, a.rejected - b.rejected, a.dropped - b.dropped, a.grafts - b.grafts, a.prunes - b.prunes,
	}
}

var _ pubsub.RawTracer = (*gossipCounter)(nil)

func (g *gossipCounter) OnNewOutboundStream(peer.ID, protocol.ID) {}
func (g *gossipCounter) OnClosedOutboundStream(peer.ID)           {}
func (g *gossipCounter) AddPeer(peer.ID, protocol.ID)             {}
func (g *gossipCounter) RemovePeer(peer.ID)                       {}
func (g *gossipCounter) Join(string)                              {}
func (g *gossipCounter) Leave(string)                             {}
func (g *gossipCounter) Graft(peer.ID, string)                    { g.grafts.Add(1) }
func (g *gossipCounter) Prune(peer.ID, string)                    { g.prunes.Add(1) }
func (g *gossipCounter) ValidateMessage(*pubsub.Message)          {}
func (g *gossipCounter) DeliverMessage(*pubsub.Message)           { g.delivered.Add(1) }
func (g *gossipCounter) RejectMessage(*pubsub.Message, string)    { g.rejected.Add(1) }
func (g *gossipCounter) DuplicateMessage(*pubsub.Message)         { g.duplicates.Add(1) }
func (g *gossipCounter) ThrottlePeer(peer.ID)                     {}
func (g *gossipCounter) SendRPC(*pubsub.RPC, peer.ID)             {}
func (g *gossipCounter) DropRPC(*pubsub.RPC, peer.ID)             { g.dropped.Add(1) }
func (g *gossipCounter) UndeliverableMessage(*pubsub.Message)     {}
func (g *gossipCounter) SendRPCCompleted(*pubsub.RPC, peer.ID, time.Duration) {
}

func (g *gossipCounter) RecvRPC(rpc *pubsub.RPC) {
	g.rpcMessages.Add(int64(len(rpc.GetPublish())))
	for _, ih := range rpc.GetControl().GetIhave() {
		g.ihave.Add(int64(len(ih.GetMessageIDs())))
	}
	for _, iw := range rpc.GetControl().GetIwant() {
		g.iwant.Add(int64(len(iw.GetMessageIDs())))
	}
}
