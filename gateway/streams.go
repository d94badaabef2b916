package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// Streams to nodes are reused, one call at a time, as HTTP/1.1 clients
// reuse connections: opening a libp2p stream (yamux frames both ways,
// protocol negotiation, resource accounting, a goroutine on the node) and
// closing it cost about a seventh of the gateway's and the node's CPU when
// every call had its own. Only a stream whose last call ended with the
// node's trailer, with nothing left unread, goes back to the pool.

const (
	// streamIdle is how long a stream waits in the pool; the node keeps one
	// longer (provider.streamIdleTimeout), so the gateway closes it first.
	streamIdle = 30 * time.Second
	// maxIdleStreams bounds the idle streams kept per node: enough for the
	// calls a busy gateway has in flight to one node at once.
	maxIdleStreams = 64
)

// streamOpener opens a new stream to a node (the host's NewStream).
type streamOpener func(ctx context.Context, node peer.ID) (network.Stream, error)

type idleStream struct {
	s     network.Stream
	since time.Time
}

// streamPool keeps idle /tokenrouter/infer/1 streams per node.
type streamPool struct {
	open    streamOpener
	metrics metrics

	mu     sync.Mutex
	idle   map[peer.ID][]idleStream
	closed bool // the pool stopped: streams given back are closed
}

func newStreamPool(open streamOpener, m metrics) *streamPool {
	return &streamPool{open: open, metrics: m, idle: map[peer.ID][]idleStream{}}
}

// get returns an idle stream to node, or a new one (always a new one when
// fresh); reused says which. A reused stream may have died since (its
// connection closed, the node gave up on it): a call that fails on one
// before any answer tries a new one.
func (p *streamPool) get(ctx context.Context, node peer.ID, now time.Time, fresh bool) (s network.Stream, reused bool, err error) {
	var stale []network.Stream
	p.mu.Lock()
	list := p.idle[node]
	for !fresh && len(list) > 0 {
		last := list[len(list)-1] // the most recent: the least likely to have timed out
		list = list[:len(list)-1]
		if now.Sub(last.since) < streamIdle {
			s = last.s
			break
		}
		stale = append(stale, last.s)
	}
	p.setIdle(node, list)
	p.mu.Unlock()
	closeAll(stale)
	if s != nil {
		p.metrics.streams.WithLabelValues("reused").Inc()
		return s, true, nil
	}
	s, err = p.open(ctx, node)
	if err == nil {
		p.metrics.streams.WithLabelValues("opened").Inc()
	}
	return s, false, err
}

// put gives back a stream whose last call ended cleanly.
func (p *streamPool) put(node peer.ID, s network.Stream, now time.Time) {
	s.SetDeadline(time.Time{})
	p.mu.Lock()
	if p.closed || len(p.idle[node]) >= maxIdleStreams {
		p.mu.Unlock()
		s.Close()
		return
	}
	p.idle[node] = append(p.idle[node], idleStream{s, now})
	p.mu.Unlock()
}

func (p *streamPool) setIdle(node peer.ID, list []idleStream) {
	if len(list) == 0 {
		delete(p.idle, node)
		return
	}
	p.idle[node] = list
}

// expire closes the streams idle for streamIdle or more.
func (p *streamPool) expire(now time.Time) {
	var stale []network.Stream
	p.mu.Lock()
	for node, list := range p.idle {
		kept := list[:0]
		for _, st := range list {
			if now.Sub(st.since) < streamIdle {
				kept = append(kept, st)
			} else {
				stale = append(stale, st.s)
			}
		}
		clear(list[len(kept):])
		p.setIdle(node, kept)
	}
	p.mu.Unlock()
	closeAll(stale) // outside the lock: a close may wait on the connection
}

func closeAll(streams []network.Stream) {
	for _, s := range streams {
		s.Close()
	}
}

// run expires idle streams until ctx ends, then closes them all; streams
// given back after that (calls still draining) are closed.
func (p *streamPool) run(ctx context.Context) {
	t := time.NewTicker(streamIdle / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			p.mu.Lock()
			p.closed = true
			p.mu.Unlock()
			p.expire(time.Now().Add(streamIdle))
			return
		case now := <-t.C:
			p.expire(now)
		}
	}
}

// cancelFrame asks the node to stop the call in progress.
var cancelFrame = []byte{p2p.FrameCancel, 0}
