package p2p

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	msmux "github.com/multiformats/go-multistream"
	"github.com/tokenrouter/tokenrouter/nodecore"
)

// HostSighting is one host seen alive behind a peer id: the listen
// addresses it gave on one connection (with /p2p/<id>, as announcements
// carry them) and the sequence number of its signed peer record (its start
// time in nanoseconds; 0 when it sent none).
type HostSighting struct {
	Peer  string
	Addrs []string
	Seq   uint64
}

// WatchTwins watches this host's connections for one peer id reached
// through two hosts: GossipSub keeps one stream per peer id, so two hosts
// sharing a key starve each other's announcements, but each connection
// still runs identify, which tells what that host listens on. Every
// interval, for each peer with live connections whose identified listen
// addresses differ, it pings each such connection and calls seen, in
// record sequence order, for each that answers: both hosts are alive at
// once. A restarted node's old connection that has not closed yet does
// not answer, so a restart is not seen as two hosts. It returns when ctx
// ends.
func WatchTwins(ctx context.Context, h *Host, every time.Duration, seen func(HostSighting)) error {
	sub, err := h.EventBus().Subscribe(new(event.EvtPeerIdentificationCompleted), eventbus.BufSize(256))
	if err != nil {
		return err
	}
	defer sub.Close()
	w := &twinWatch{conns: map[network.Conn]connHost{}}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				for _, s := range w.check(ctx) {
					seen(s)
				}
			}
		}
	})
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-sub.Out():
			if !ok {
				return nil
			}
			w.identified(e.(event.EvtPeerIdentificationCompleted))
		}
	}
}

type connHost struct {
	peer  peer.ID
	key   string // nodecore.AddrSetKey(addrs)
	addrs []string
	seq   uint64
}

type twinWatch struct {
	mu    sync.Mutex
	conns map[network.Conn]connHost
}

func (w *twinWatch) identified(e event.EvtPeerIdentificationCompleted) {
	if e.Conn == nil || e.Conn.IsClosed() {
		return
	}
	addrs := make([]string, 0, len(e.ListenAddrs))
	for _, a := range e.ListenAddrs {
		addrs = append(addrs, a.String()+"/p2p/"+e.Peer.String())
	}
	var seq uint64
	if e.SignedPeerRecord != nil {
		if r, err := e.SignedPeerRecord.Record(); err == nil {
			if pr, ok := r.(*peer.PeerRecord); ok {
				seq = pr.Seq
			}
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.conns[e.Conn] = connHost{peer: e.Peer, key: nodecore.AddrSetKey(addrs), addrs: addrs, seq: seq}
}

// check pings the connections of every peer whose live connections were
// identified with different addresses, and returns the hosts that answered.
func (w *twinWatch) check(ctx context.Context) []HostSighting {
	type probe struct {
		c  network.Conn
		ch connHost
	}
	w.mu.Lock()
	byPeer := map[peer.ID]map[string]probe{}
	for c, ch := range w.conns {
		if c.IsClosed() {
			delete(w.conns, c)
			continue
		}
		if byPeer[ch.peer] == nil {
			byPeer[ch.peer] = map[string]probe{}
		}
		byPeer[ch.peer][ch.key] = probe{c, ch} // one connection per address set
	}
	w.mu.Unlock()
	var out []HostSighting
	for _, sets := range byPeer {
		if len(sets) < 2 {
			continue
		}
		ps := make([]probe, 0, len(sets))
		for _, p := range sets {
			ps = append(ps, p)
		}
		sort.Slice(ps, func(i, j int) bool { return ps[i].ch.seq < ps[j].ch.seq })
		alive := make([]bool, len(ps))
		var wg sync.WaitGroup
		for i, p := range ps {
			wg.Go(func() { alive[i] = pingConn(ctx, p.c, 5*time.Second) == nil })
		}
		wg.Wait()
		for i, p := range ps {
			if alive[i] {
				out = append(out, HostSighting{Peer: p.ch.peer.String(), Addrs: p.ch.addrs, Seq: p.ch.seq})
			}
		}
	}
	return out
}

// pingConn runs libp2p's ping on one given connection (host.NewStream
// would pick whichever connection to the peer it likes).
func pingConn(ctx context.Context, c network.Conn, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	s, err := c.NewStream(ctx)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.SetProtocol(ping.ID); err != nil {
		s.Reset()
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		s.SetDeadline(dl)
	}
	if err := msmux.SelectProtoOrFail(ping.ID, s); err != nil {
		s.Reset()
		return err
	}
	buf := make([]byte, ping.PingSize)
	rand.Read(buf)
	if _, err := s.Write(buf); err != nil {
		s.Reset()
		return err
	}
	got := make([]byte, ping.PingSize)
	if _, err := io.ReadFull(s, got); err != nil {
		s.Reset()
		return err
	}
	if !bytes.Equal(buf, got) {
		s.Reset()
		return io.ErrUnexpectedEOF
	}
	return nil
}
