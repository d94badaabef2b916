package p2p

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	ma "github.com/multiformats/go-multiaddr"
)

// Protocol ids.
const (
	ProtoInfer    protocol.ID = "/tokenrouter/infer/1"
	ProtoSettle   protocol.ID = "/tokenrouter/settle/1"
	ProtoDiscover protocol.ID = "/tokenrouter/discover/1"
)

// ErrPeerNotFound is returned when no known peer can tell where a peer is.
var ErrPeerNotFound = errors.New("p2p: peer not found")

type discoverReply struct {
	Addrs []string `json:"addrs"`
}

// discoverConnectGrace is how long serveDiscover waits for the peer asked
// about to be connected: a peer whose dial to this host has returned on its
// side (and whose announcement a gateway may already have seen) can still
// be finishing the handshake here for a few milliseconds.
const discoverConnectGrace = 250 * time.Millisecond

// serveDiscover answers "where is peer X?" with the addresses this host has
// for X while it is connected to X (what identify told us).
func (h *Host) serveDiscover(s network.Stream) {
	defer s.Close()
	s.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(s)
	_, payload, err := ReadFrame(r, nil, 256)
	if err != nil {
		s.Reset()
		return
	}
	var reply discoverReply
	if id, err := peer.Decode(string(payload)); err == nil && h.waitConnected(id, discoverConnectGrace) {
		h.waitIdentified(id, 2*time.Second)
		for _, a := range h.Peerstore().Addrs(id) {
			reply.Addrs = append(reply.Addrs, a.String())
		}
	}
	out, _ := json.Marshal(reply)
	w := bufio.NewWriter(s)
	if WriteFrame(w, FrameJSON, out) != nil || w.Flush() != nil {
		s.Reset()
	}
}

// Find makes sure this host is connected to p: already connected, dialled
// from known addresses, dialled after asking the connected bootstrap peers
// where p is, or else found in the DHT (see dht.go).
func (h *Host) Find(ctx context.Context, p peer.ID) error {
	if p == h.ID() {
		return nil
	}
	if h.Network().Connectedness(p) == network.Connected {
		return nil
	}
	if len(h.Peerstore().Addrs(p)) > 0 {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := h.Connect(dctx, peer.AddrInfo{ID: p})
		cancel()
		if err == nil {
			return nil
		}
	}
	var lastErr error = ErrPeerNotFound
	for _, b := range h.bootstrap {
		addrs, err := h.askWhere(ctx, b.ID, p)
		if err != nil {
			lastErr = err
			continue
		}
		if len(addrs) == 0 {
			continue
		}
		h.Peerstore().AddAddrs(p, addrs, peerstore.TempAddrTTL)
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = h.Connect(dctx, peer.AddrInfo{ID: p, Addrs: addrs})
		cancel()
		if err == nil {
			return nil
		}
		lastErr = err
	}
	err := h.findInDHT(ctx, p)
	if err == nil {
		return nil
	}
	// Keep a bootstrap peer's answer that could not be dialled over the
	// DHT's "not found".
	if !errors.Is(err, ErrPeerNotFound) || errors.Is(lastErr, ErrPeerNotFound) {
		lastErr = err
	}
	return fmt.Errorf("find %s: %w", p, lastErr)
}

func (h *Host) askWhere(ctx context.Context, via, p peer.ID) ([]ma.Multiaddr, error) {
	if h.Network().Connectedness(via) != network.Connected {
		return nil, fmt.Errorf("bootstrap %s not connected", via)
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := h.NewStream(sctx, via, ProtoDiscover)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(5 * time.Second))
	w := bufio.NewWriter(s)
	if err := WriteFrame(w, FrameJSON, []byte(p.String())); err != nil {
		s.Reset()
		return nil, err
	}
	if err := w.Flush(); err != nil {
		s.Reset()
		return nil, err
	}
	_, payload, err := ReadFrame(bufio.NewReader(s), nil, 64<<10)
	if err != nil {
		s.Reset()
		return nil, err
	}
	var reply discoverReply
	if err := json.Unmarshal(payload, &reply); err != nil {
		return nil, err
	}
	out := make([]ma.Multiaddr, 0, len(reply.Addrs))
	for _, a := range reply.Addrs {
		if m, err := ma.NewMultiaddr(a); err == nil {
			out = append(out, m)
		}
	}
	return out, nil
}

// waitConnected reports whether id is connected, waiting up to d for it.
func (h *Host) waitConnected(id peer.ID, d time.Duration) bool {
	if h.Network().Connectedness(id) == network.Connected {
		return true
	}
	sub, err := h.EventBus().Subscribe(new(event.EvtPeerConnectednessChanged), eventbus.Name("tokenrouter discover"))
	if err != nil {
		return false
	}
	defer sub.Close()
	if h.Network().Connectedness(id) == network.Connected { // connected while subscribing
		return true
	}
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	for {
		select {
		case e, ok := <-sub.Out():
			if !ok {
				return false
			}
			if ev := e.(event.EvtPeerConnectednessChanged); ev.Peer == id && ev.Connectedness == network.Connected {
				return true
			}
		case <-timeout.C:
			return false
		}
	}
}

// waitIdentified waits (up to d) until identify has told this host where
// a peer that just connected listens.
func (h *Host) waitIdentified(id peer.ID, d time.Duration) {
	ids, ok := h.Host.(interface{ IDService() identify.IDService })
	if !ok || len(h.Peerstore().Addrs(id)) > 0 {
		return
	}
	timeout := time.After(d)
	for _, c := range h.Network().ConnsToPeer(id) {
		select {
		case <-ids.IDService().IdentifyWait(c):
		case <-timeout:
			return
		}
	}
}
