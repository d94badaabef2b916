package p2p

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	msmux "github.com/multiformats/go-multistream"
)

// memberlist's packets and streams ride libp2p, so membership shares the
// host's identity, encryption, relays and hole punching.
const (
	// ProtoSwimPacket carries memberlist's best-effort packets (probes,
	// acks, gossip): a uvarint length and the packet, repeated, on a stream
	// the sender keeps open while it has packets for that peer.
	ProtoSwimPacket = "/tokenrouter/swim/packet/1"
	// ProtoSwimStream carries one memberlist stream (push/pull state
	// exchange, fallback ping) per libp2p stream.
	ProtoSwimStream = "/tokenrouter/swim/stream/1"
)

// swimPort is the port of every member's placeholder address (memberlist's
// default; it is never dialled).
const swimPort = 7946

// maxSwimPacket bounds one packet frame (memberlist's own UDP read buffer).
const maxSwimPacket = 64 << 10

// Errors of the membership transport.
var (
	ErrTransportClosed = errors.New("p2p: membership transport closed")
	ErrNoNodeName      = errors.New("p2p: membership address without a node name (peer id)")
)

// SwimAddr is the net.Addr of a member: memberlist addresses members by
// name, which is the peer id, and keeps a placeholder IP:port beside it.
type SwimAddr struct{ Peer peer.ID }

// Network is "libp2p".
func (a SwimAddr) Network() string { return "libp2p" }

// String is the member's placeholder host:port. memberlist parses it as
// one, and replies to its sender by name (RequireNodeNames), never by it.
func (a SwimAddr) String() string {
	return net.JoinHostPort(placeholderIP(a.Peer).String(), strconv.Itoa(swimPort))
}

// placeholderIP is a unique-local IPv6 address derived from the peer id.
// memberlist wants an IP and port per node (it gossips them, logs them and
// treats a known name with a new address as a conflict); the transport
// routes by name through libp2p, which knows the peer's real, possibly
// relayed, addresses. A hash keeps the placeholder stable across restarts
// (no false conflicts) and distinct between peers.
func placeholderIP(id peer.ID) net.IP {
	sum := sha256.Sum256([]byte(id))
	ip := make(net.IP, net.IPv6len)
	ip[0] = 0xfd
	copy(ip[1:], sum[:net.IPv6len-1])
	return ip
}

// swimTransportConfig tunes the transport; membership derives it from
// MembershipConfig.
type swimTransportConfig struct {
	DialTimeout  time.Duration // bound on opening a packet stream (dial included)
	WriteTimeout time.Duration // bound on writing one packet
	PacketQueue  int           // packets held per peer while its stream opens
	IdleStream   time.Duration // a packet stream unused this long is closed
}

// swimTransport is a memberlist.NodeAwareTransport over libp2p streams.
//
// Packets: WriteToAddress never blocks on the network (memberlist calls it
// from its probe and gossip loops, as it would a UDP socket): it queues the
// packet for a per-peer sender goroutine that keeps one stream open to that
// peer while packets flow and closes it after IdleStream. A full queue
// drops the packet, as a full UDP buffer would. The packet stream is
// one-way; the peer answers on its own stream to us. A kept stream costs
// ~7 µs of CPU per packet, a new stream per packet ~100 µs (sender and
// receiver together, loopback TCP+yamux: BenchmarkSwimPacket).
//
// Streams: DialAddressTimeout opens one libp2p stream per memberlist
// stream and hands it over as a net.Conn whose deadlines are the stream's.
//
// tap, when set, sees every packet sent (from = "") and received (from =
// the sender); membership reads suspicions from them (see swimstate.go).
type swimTransport struct {
	h        host.Host
	self     peer.ID
	selfAddr SwimAddr
	cfg      swimTransportConfig
	log      *slog.Logger
	tap      func(buf []byte, from peer.ID)

	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	senders map[peer.ID]*swimSender
	inbound map[network.Stream]struct{}
	dropped int
}

var _ memberlist.NodeAwareTransport = (*swimTransport)(nil)

type swimSender struct {
	q chan []byte
}

func newSwimTransport(h host.Host, cfg swimTransportConfig, tap func([]byte, peer.ID), log *slog.Logger) *swimTransport {
	ctx, cancel := context.WithCancel(context.Background())
	t := &swimTransport{
		h: h, self: h.ID(), selfAddr: SwimAddr{h.ID()}, cfg: cfg, log: log, tap: tap,
		packetCh: make(chan *memberlist.Packet),
		streamCh: make(chan net.Conn),
		ctx:      ctx, cancel: cancel,
		senders: map[peer.ID]*swimSender{},
		inbound: map[network.Stream]struct{}{},
	}
	h.SetStreamHandler(ProtoSwimPacket, t.servePackets)
	h.SetStreamHandler(ProtoSwimStream, t.serveStream)
	return t
}

// FinalAdvertiseAddr returns this member's placeholder address whatever
// was configured: nothing dials it (see placeholderIP).
func (t *swimTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return placeholderIP(t.self), swimPort, nil
}

// WriteTo refuses: members are reached by name (WriteToAddress).
func (t *swimTransport) WriteTo(_ []byte, addr string) (time.Time, error) {
	return time.Time{}, fmt.Errorf("%w: %s", ErrNoNodeName, addr)
}

// WriteToAddress queues b for the peer named a.Name and returns at once.
func (t *swimTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	id, err := nameToPeer(a)
	if err != nil {
		return time.Time{}, err
	}
	buf := append([]byte(nil), b...) // memberlist may reuse b once we return
	if t.tap != nil {
		t.tap(buf, "")
	}
	return time.Now(), t.enqueue(id, buf)
}

func nameToPeer(a memberlist.Address) (peer.ID, error) {
	if a.Name == "" {
		return "", fmt.Errorf("%w: %s", ErrNoNodeName, a.Addr)
	}
	id, err := peer.Decode(a.Name)
	if err != nil {
		return "", fmt.Errorf("p2p: member name %q is not a peer id: %w", a.Name, err)
	}
	return id, nil
}

// PacketCh delivers packets received from other members.
func (t *swimTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

// StreamCh delivers streams other members opened to us.
func (t *swimTransport) StreamCh() <-chan net.Conn { return t.streamCh }

// DialTimeout refuses: members are reached by name (DialAddressTimeout).
func (t *swimTransport) DialTimeout(addr string, _ time.Duration) (net.Conn, error) {
	return nil, fmt.Errorf("%w: %s", ErrNoNodeName, addr)
}

// DialAddressTimeout opens a stream to the peer named a.Name, dialling it
// if needed, within timeout.
func (t *swimTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	id, err := nameToPeer(a)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(t.ctx, timeout)
	defer cancel()
	s, err := openLazy(ctx, t.h, id, ProtoSwimStream)
	if err != nil {
		return nil, err
	}
	return &swimConn{Stream: s, local: t.selfAddr, remote: SwimAddr{id}}, nil
}

// Shutdown stops serving, closes every stream and waits for the senders.
func (t *swimTransport) Shutdown() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	inbound := make([]network.Stream, 0, len(t.inbound))
	for s := range t.inbound {
		inbound = append(inbound, s)
	}
	t.mu.Unlock()
	t.h.RemoveStreamHandler(ProtoSwimPacket)
	t.h.RemoveStreamHandler(ProtoSwimStream)
	t.cancel()
	for _, s := range inbound {
		s.Reset()
	}
	t.wg.Wait()
	return nil
}

// enqueue hands b to id's sender, starting one if there is none.
func (t *swimTransport) enqueue(id peer.ID, b []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrTransportClosed
	}
	s := t.senders[id]
	if s == nil {
		s = &swimSender{q: make(chan []byte, t.cfg.PacketQueue)}
		t.senders[id] = s
		t.wg.Add(1)
		go t.send(id, s)
	}
	select {
	case s.q <- b:
	default:
		t.dropped++
		t.log.Debug("membership packet dropped: queue full", "peer", id.String(), "dropped_total", t.dropped)
	}
	return nil
}

// send writes id's queued packets on one stream until the queue stays
// empty for IdleStream.
func (t *swimTransport) send(id peer.ID, s *swimSender) {
	defer t.wg.Done()
	var st network.Stream
	defer func() { closeQuietly(st, t.ctx.Err() != nil) }()
	idle := time.NewTimer(t.cfg.IdleStream)
	defer idle.Stop()
	for {
		select {
		case <-t.ctx.Done():
			return
		case b := <-s.q:
			st = t.writePacket(id, st, b)
			idle.Reset(t.cfg.IdleStream)
		case <-idle.C:
			if t.retire(id, s) {
				return
			}
			idle.Reset(t.cfg.IdleStream)
		}
	}
}

// retire removes an idle sender unless a packet arrived meanwhile.
func (t *swimTransport) retire(id peer.ID, s *swimSender) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(s.q) > 0 {
		return false
	}
	if t.senders[id] == s {
		delete(t.senders, id)
	}
	return true
}

// writePacket writes one frame on st, opening a stream when there is none
// and once more when a kept stream turns out broken (its connection was
// trimmed or lost). It returns the stream to keep, nil when it failed: the
// packet is lost, as UDP would lose it.
func (t *swimTransport) writePacket(id peer.ID, st network.Stream, b []byte) network.Stream {
	frame := binary.AppendUvarint(make([]byte, 0, binary.MaxVarintLen32+len(b)), uint64(len(b)))
	frame = append(frame, b...)
	for {
		fresh := st == nil
		if fresh {
			var err error
			if st, err = t.openPacketStream(id); err != nil {
				t.log.Debug("membership packet not sent", "peer", id.String(), "err", err)
				return nil
			}
		}
		st.SetWriteDeadline(time.Now().Add(t.cfg.WriteTimeout))
		_, err := st.Write(frame)
		if err == nil {
			return st
		}
		st.Reset()
		st = nil
		if fresh {
			t.log.Debug("membership packet not sent", "peer", id.String(), "err", err)
			return nil
		}
	}
}

func (t *swimTransport) openPacketStream(id peer.ID) (network.Stream, error) {
	ctx, cancel := context.WithTimeout(t.ctx, t.cfg.DialTimeout)
	defer cancel()
	// A member behind NAT may be reachable only through a relay; probes
	// are small enough for a relayed connection's data budget.
	ctx = network.WithAllowLimitedConn(ctx, "membership probes")
	return openLazy(ctx, t.h, id, ProtoSwimPacket)
}

// servePackets reads frames from one peer's packet stream into PacketCh.
func (t *swimTransport) servePackets(s network.Stream) {
	if !t.track(s) {
		s.Reset()
		return
	}
	defer t.untrack(s)
	from := SwimAddr{s.Conn().RemotePeer()}
	r := bufio.NewReader(s)
	for {
		// A sender closes its stream after IdleStream; twice that in
		// silence is a peer that went away without closing.
		s.SetReadDeadline(time.Now().Add(2 * t.cfg.IdleStream))
		buf, err := readSwimFrame(r)
		if err != nil {
			if errors.Is(err, io.EOF) {
				s.Close()
			} else {
				s.Reset()
			}
			return
		}
		p := &memberlist.Packet{Buf: buf, From: from, Timestamp: time.Now()}
		if t.tap != nil {
			t.tap(buf, from.Peer)
		}
		select {
		case t.packetCh <- p:
		case <-t.ctx.Done():
			s.Reset()
			return
		}
	}
}

func readSwimFrame(r *bufio.Reader) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n == 0 || n > maxSwimPacket {
		return nil, fmt.Errorf("%w: membership packet of %d bytes", ErrFrameTooLarge, n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, unexpected(err)
	}
	return buf, nil
}

// serveStream hands an inbound memberlist stream to memberlist.
func (t *swimTransport) serveStream(s network.Stream) {
	c := &swimConn{Stream: s, local: t.selfAddr, remote: SwimAddr{s.Conn().RemotePeer()}}
	select {
	case t.streamCh <- c:
	case <-t.ctx.Done():
		s.Reset()
	}
}

func (t *swimTransport) track(s network.Stream) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.inbound[s] = struct{}{}
	return true
}

func (t *swimTransport) untrack(s network.Stream) {
	t.mu.Lock()
	delete(t.inbound, s)
	t.mu.Unlock()
}

// swimConn is a libp2p stream as the net.Conn memberlist expects.
type swimConn struct {
	network.Stream
	local, remote SwimAddr
}

// LocalAddr is this member's SwimAddr.
func (c *swimConn) LocalAddr() net.Addr { return c.local }

// RemoteAddr is the other member's SwimAddr.
func (c *swimConn) RemoteAddr() net.Addr { return c.remote }

// openLazy opens a stream to id speaking proto, dialling id from the
// peerstore if there is no connection. Unlike host.NewStream it does not
// wait for identify on a fresh connection: the protocol is proposed with
// the first write (multistream-select's lazy mode, which NewStream uses
// anyway once identify has run). A probe of a peer this host is not
// connected to then costs dial + one round trip instead of dial + two, and
// at 1,000 members most probes go to such peers (the connection manager
// keeps ~200 connections).
func openLazy(ctx context.Context, h host.Host, id peer.ID, proto protocol.ID) (network.Stream, error) {
	s, err := h.Network().NewStream(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := s.SetProtocol(proto); err != nil {
		s.Reset()
		return nil, err
	}
	return &lazyStream{Stream: s, rw: msmux.NewMSSelect(s, proto)}, nil
}

// lazyStream reads and writes through multistream-select's lazy client.
type lazyStream struct {
	network.Stream
	rw io.ReadWriteCloser
}

func (s *lazyStream) Read(b []byte) (int, error)  { return s.rw.Read(b) }
func (s *lazyStream) Write(b []byte) (int, error) { return s.rw.Write(b) }

// Close finishes the protocol handshake (bounded: the peer may be gone)
// and closes the stream.
func (s *lazyStream) Close() error {
	s.Stream.SetReadDeadline(time.Now().Add(time.Second))
	return s.rw.Close()
}

// closeQuietly closes st, or resets it when shutting down.
func closeQuietly(st network.Stream, reset bool) {
	if st == nil {
		return
	}
	if reset {
		st.Reset()
		return
	}
	st.Close()
}

// memberMeta is memberlist's Delegate, used only for node metadata: each
// member's libp2p addresses ride its alive messages, so a member learnt
// through others can be dialled. No user messages, broadcasts or state.
type memberMeta struct{ h host.Host }

// NodeMeta encodes this host's addresses, the most useful first, as many
// as fit in limit bytes.
func (d memberMeta) NodeMeta(limit int) []byte { return encodeMemberAddrs(d.h.Addrs(), limit) }

func (memberMeta) NotifyMsg([]byte)                {}
func (memberMeta) GetBroadcasts(int, int) [][]byte { return nil }
func (memberMeta) LocalState(bool) []byte          { return nil }
func (memberMeta) MergeRemoteState([]byte, bool)   {}

// memberAddrTTL is how long addresses learnt from membership stay in the
// peerstore; a member re-advertises them when they change.
const memberAddrTTL = 30 * time.Minute

// encodeMemberAddrs is uvarint-length-prefixed binary multiaddrs, public
// ones first, then relayed, private and loopback ones, up to limit bytes.
func encodeMemberAddrs(addrs []ma.Multiaddr, limit int) []byte {
	rank := func(a ma.Multiaddr) int {
		switch {
		case manet.IsPublicAddr(a):
			return 0
		case isRelayed(a):
			return 1
		case manet.IsIPLoopback(a):
			return 3
		}
		return 2
	}
	sorted := slices.Clone(addrs)
	slices.SortStableFunc(sorted, func(a, b ma.Multiaddr) int { return rank(a) - rank(b) })
	var out []byte
	for _, a := range sorted {
		b := a.Bytes()
		next := binary.AppendUvarint(slices.Clip(out), uint64(len(b)))
		next = append(next, b...)
		if len(next) > limit {
			continue
		}
		out = next
	}
	return out
}

func isRelayed(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

func decodeMemberAddrs(meta []byte) []ma.Multiaddr {
	var out []ma.Multiaddr
	for len(meta) > 0 {
		n, k := binary.Uvarint(meta)
		if k <= 0 || n > uint64(len(meta)-k) {
			return out
		}
		if a, err := ma.NewMultiaddrBytes(meta[k : k+int(n)]); err == nil {
			out = append(out, a)
		}
		meta = meta[k+int(n):]
	}
	return out
}

// learnAddrs adds the addresses in n's metadata to the peerstore.
func learnAddrs(h host.Host, n *memberlist.Node) {
	id, err := peer.Decode(n.Name)
	if err != nil || id == h.ID() {
		return
	}
	if addrs := decodeMemberAddrs(n.Meta); len(addrs) > 0 {
		h.Peerstore().AddAddrs(id, addrs, memberAddrTTL)
	}
}

// watchAddrs re-advertises this member when the host's addresses change
// (a relay reservation, an address AutoNAT confirmed), so others can keep
// dialling it.
func (m *Membership) watchAddrs(ctx context.Context, h host.Host) error {
	sub, err := h.EventBus().Subscribe(new(event.EvtLocalAddressesUpdated))
	if err != nil {
		return fmt.Errorf("p2p: membership: watch addresses: %w", err)
	}
	last := encodeMemberAddrs(h.Addrs(), memberlist.MetaMaxSize)
	m.loops.Go(func() {
		defer sub.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case <-sub.Out():
			}
			meta := encodeMemberAddrs(h.Addrs(), memberlist.MetaMaxSize)
			if bytes.Equal(meta, last) {
				continue
			}
			last = meta
			if err := m.ml.UpdateNode(m.cfg.StreamTimeout); err != nil {
				m.log.Debug("membership: addresses not re-advertised", "err", err)
			}
		}
	})
	return nil
}
