package mesh

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/transport/quicreuse"
	"github.com/marcopolo/simnet"
	"github.com/quic-go/quic-go"
	"go.uber.org/fx"
)

// Roles a host plays.
type role int

const (
	roleNode      role = iota // announces its load
	roleGateway               // subscribes to the load topic(s); measured
	roleBootstrap             // everyone dials it first; subscribes, relays, gives peer exchange
)

func (r role) String() string {
	return [...]string{"node", "gateway", "bootstrap"}[r]
}

// simHost is one libp2p host on the simulated network.
type simHost struct {
	idx    int
	role   role
	model  int // the model a node serves
	h      host.Host
	info   peer.AddrInfo
	conn   atomic.Pointer[simnet.SimConn] // its UDP endpoint: closing it cuts the host off
	bytes  byteCounter
	gossip gossipState
	member *memberHandle // nil without the membership layer
	dead   atomic.Bool
	ctx    context.Context    // its life: ended by stop
	stop   context.CancelFunc // ends its goroutines (announcing, redialling, reading)
}

// hostKey derives host idx's identity from the seed, so the same seed gives
// the same peer ids (and the same topology and schedule).
func hostKey(seed uint64, idx int) (crypto.PrivKey, error) {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	binary.LittleEndian.PutUint64(s[8:], uint64(idx))
	copy(s[16:], "tokenrouter-mesh")
	priv, _, err := crypto.GenerateEd25519Key(rand.NewChaCha8(s))
	return priv, err
}

// newSimHost starts a libp2p host listening on QUIC at a simulated public
// address: what the live p2p.Host runs (QUIC, identify, the default
// connection manager), minus the resource manager's limits and metrics.
func newSimHost(nw *simnet.Simnet, link simnet.NodeBiDiLinkSettings, seed uint64, idx int, conns libp2p.Option) (*simHost, error) {
	key, err := hostKey(seed, idx)
	if err != nil {
		return nil, err
	}
	sh := &simHost{idx: idx}
	addr := fmt.Sprintf("/ip4/%s/udp/8000/quic-v1", simnet.IntToPublicIPv4(idx))
	h, err := libp2p.New(
		conns,
		libp2p.Identity(key),
		libp2p.ListenAddrStrings(addr),
		simQUIC(nw, link, &sh.conn),
		libp2p.BandwidthReporter(&sh.bytes),
		libp2p.DisableMetrics(),
		// Identify's address discovery stalls synctest (x/simlibp2p says so).
		libp2p.DisableIdentifyAddressDiscovery(),
		libp2p.ResourceManager(&network.NullResourceManager{}),
	)
	if err != nil {
		return nil, fmt.Errorf("mesh: host %d: %w", idx, err)
	}
	sh.h = h
	sh.info = peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}
	return sh, nil
}

// connManager is the connection manager option for a host: libp2p's
// default unless the scenario sets one (bootstrap peers always keep it).
func connManager(spec *Spec, r role) (libp2p.Option, error) {
	if spec.ConnHigh == 0 || r == roleBootstrap {
		return libp2p.DefaultConnectionManager, nil
	}
	var opts []connmgr.Option
	if spec.ConnGrace > 0 {
		opts = append(opts, connmgr.WithGracePeriod(spec.ConnGrace.D()))
	}
	if spec.ConnSilence > 0 {
		opts = append(opts, connmgr.WithSilencePeriod(spec.ConnSilence.D()))
	}
	cm, err := connmgr.NewConnManager(spec.ConnLow, spec.ConnHigh, opts...)
	if err != nil {
		return nil, err
	}
	return libp2p.ConnectionManager(cm), nil
}

// kill cuts the host off the network without a goodbye (no QUIC close
// frame, no GossipSub or membership leave), as kill -9 or a pulled cable
// does, then frees it.
func (sh *simHost) kill() {
	sh.dead.Store(true)
	if c := sh.conn.Load(); c != nil {
		c.Close()
	}
	sh.stop() // its membership leaves, but nothing gets out
	sh.h.Close()
}

// simQUIC is x/simlibp2p's QUICSimnet, keeping the endpoint so that the
// host can be cut off.
func simQUIC(nw *simnet.Simnet, link simnet.NodeBiDiLinkSettings, keep *atomic.Pointer[simnet.SimConn]) libp2p.Option {
	sel := &sourceIP{}
	return libp2p.QUICReuse(
		func(l fx.Lifecycle, rk quic.StatelessResetKey, tk quic.TokenGeneratorKey, opts ...quicreuse.Option) (*quicreuse.ConnManager, error) {
			cm, err := quicreuse.NewConnManager(rk, tk, opts...)
			if err != nil {
				return nil, err
			}
			l.Append(fx.StopHook(cm.Close))
			return cm, nil
		},
		quicreuse.OverrideSourceIPSelector(func() (quicreuse.SourceIPSelector, error) { return sel, nil }),
		quicreuse.OverrideListenUDP(func(_ string, a *net.UDPAddr) (net.PacketConn, error) {
			sel.ip.Store(&a.IP)
			c := nw.NewEndpoint(a, link)
			keep.Store(c)
			return c, nil
		}),
	)
}

type sourceIP struct{ ip atomic.Pointer[net.IP] }

func (s *sourceIP) PreferredSourceIPForDestination(*net.UDPAddr) (net.IP, error) {
	return *s.ip.Load(), nil
}

// newSimnet is the simulated network: every packet takes latency, every
// host has bandwidth up and down.
func newSimnet(latency time.Duration, log *slog.Logger) *simnet.Simnet {
	return &simnet.Simnet{LatencyFunc: simnet.StaticLatency(latency), Logger: log}
}
