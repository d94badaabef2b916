package p2p

// NAT traversal. A home node learns it is unreachable from AutoNAT (the
// bootstrap peers, running the AutoNAT service, dial it back and fail),
// then reserves a slot on every bootstrap peer's circuit relay v2 (AutoRelay
// with the bootstrap peers as static relays). Its addresses, and so its
// announcements and what /tokenrouter/discover/1 answers for it, then hold
// /p2p-circuit addresses through those relays. A gateway dials one, and
// DCUtR upgrades the relayed connection to a direct one: the node dials the
// gateway back when the gateway is public (connection reversal), or both
// sides punch a hole. A host listening on every interface also asks its
// router for a port mapping (UPnP, NAT-PMP).

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/host/autorelay"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Reachability values of Config.Reachability.
const (
	ReachabilityAuto    = ""        // AutoNAT decides (the default)
	ReachabilityPrivate = "private" // act as if behind NAT: reserve relay slots at once
	ReachabilityPublic  = "public"  // act as if publicly reachable: never use a relay
)

// Relay and AutoRelay settings. Each value says why it differs from libp2p's.
const (
	// relayBootDelay is how long a host behind NAT waits for every
	// bootstrap peer to answer before reserving slots on those that did
	// (libp2p: 3 min, for picking among many public relays; ours are few
	// and given).
	relayBootDelay = 10 * time.Second
	// relayBackoff is how long a refused reservation is not retried
	// (libp2p: 1 h; a bootstrap peer that restarts is back in seconds).
	relayBackoff = time.Minute
	// relayMinInterval spaces the asks for relay candidates after one is
	// lost (libp2p: 30 s).
	relayMinInterval = 10 * time.Second
	// relayMaxReservations is how many peers behind NAT one bootstrap peer
	// relays for (libp2p: 128).
	relayMaxReservations = 1024
	// relayMaxCircuits is how many relayed connections one reserved peer may
	// have at once: one per gateway that has not hole-punched yet
	// (libp2p: 16).
	relayMaxCircuits = 64
)

// checkReachability reports a Config.Reachability that is not one of the
// Reachability values.
func checkReachability(s string) error {
	switch s {
	case ReachabilityAuto, ReachabilityPrivate, ReachabilityPublic:
		return nil
	}
	return fmt.Errorf("p2p: reachability %q: want %q, %q or empty", s, ReachabilityPrivate, ReachabilityPublic)
}

// natOptions are the libp2p options for NAT traversal: AutoRelay with the
// bootstrap peers (other than this host) as static relays, hole punching
// with its outcomes logged, a port mapping when listening on every
// interface, and a forced reachability when cfg asks for one.
func natOptions(cfg Config, key crypto.PrivKey, log *slog.Logger) []libp2p.Option {
	opts := []libp2p.Option{libp2p.EnableHolePunching(holepunch.WithTracer(holePunchLogger{log}))}
	if relays := staticRelays(cfg.Bootstrap, key); len(relays) > 0 {
		opts = append(opts, libp2p.EnableAutoRelayWithStaticRelays(relays,
			autorelay.WithBootDelay(relayBootDelay),
			autorelay.WithBackoff(relayBackoff),
			autorelay.WithMinInterval(relayMinInterval),
		))
	}
	if listensEverywhere(cfg.Listen) {
		opts = append(opts, libp2p.NATPortMap())
	}
	switch cfg.Reachability {
	case ReachabilityPrivate:
		opts = append(opts, libp2p.ForceReachabilityPrivate())
	case ReachabilityPublic:
		opts = append(opts, libp2p.ForceReachabilityPublic())
	}
	return opts
}

// relayServiceOptions configure the circuit relay v2 a bootstrap peer
// offers. Circuits carry no data or time limit: libp2p's default (128 KiB,
// 2 min) is meant for hole-punch coordination only, and marks the
// connection limited, on which ordinary streams do not open. Here a node
// that cannot be hole-punched (both sides behind NAT, symmetric NATs) still
// serves its calls through the relay; inference traffic is text, small next
// to the compute it pays for. Reservations stay bounded per peer, IP and
// ASN by libp2p's defaults.
func relayServiceOptions() []relayv2.Option {
	rc := relayv2.DefaultResources()
	rc.Limit = nil
	rc.MaxReservations = relayMaxReservations
	rc.MaxCircuits = relayMaxCircuits
	return []relayv2.Option{relayv2.WithResources(rc)}
}

// staticRelays are the bootstrap peers other than the host with key.
func staticRelays(bootstrap []string, key crypto.PrivKey) []peer.AddrInfo {
	self, _ := peer.IDFromPrivateKey(key)
	var out []peer.AddrInfo
	for _, s := range bootstrap {
		ai, err := peer.AddrInfoFromString(s)
		if err != nil || ai.ID == self {
			continue
		}
		out = append(out, *ai)
	}
	return out
}

// listensEverywhere reports a listen address on an unspecified IP
// (0.0.0.0, ::): a host on a LAN, for which a router port mapping may help.
// A host bound to loopback (tests, dev) gains nothing from one.
func listensEverywhere(listen []string) bool {
	for _, s := range listen {
		m, err := ma.NewMultiaddr(s)
		if err != nil {
			continue
		}
		if ip, err := manet.ToIP(m); err == nil && ip.IsUnspecified() {
			return true
		}
	}
	return false
}

// IsRelayed reports whether a is a circuit relay (/p2p-circuit) address.
func IsRelayed(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

// watchNAT logs what an operator behind NAT wants to know: the host's
// reachability as AutoNAT sees it, its relay addresses, and connections
// that go through a relay or replace a relayed one. It runs until ctx ends.
func (h *Host) watchNAT(ctx context.Context) {
	sub, err := h.EventBus().Subscribe([]any{new(event.EvtLocalReachabilityChanged), new(event.EvtAutoRelayAddrsUpdated)},
		eventbus.Name("tokenrouter nat"))
	if err != nil {
		h.log.Warn("nat: cannot watch reachability", "err", err)
		return
	}
	h.Network().Notify(&connLogger{h: h})
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer sub.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-sub.Out():
				if !ok {
					return
				}
				h.logNATEvent(e)
			}
		}
	}()
}

func (h *Host) logNATEvent(e any) {
	switch e := e.(type) {
	case event.EvtLocalReachabilityChanged:
		h.log.Info("nat: reachability", "reachability", e.Reachability.String())
	case event.EvtAutoRelayAddrsUpdated:
		addrs := make([]string, len(e.RelayAddrs))
		for i, a := range e.RelayAddrs {
			addrs[i] = a.String()
		}
		h.log.Info("nat: relay addresses", "addrs", addrs)
	}
}

// connLogger logs relayed connections, and direct ones that join a
// relayed one (DCUtR's upgrade), at info; others at debug.
type connLogger struct{ h *Host }

func (c *connLogger) Connected(n network.Network, conn network.Conn) {
	p := conn.RemotePeer()
	args := []any{"peer", p.String(), "addr", conn.RemoteMultiaddr().String(), "direction", conn.Stat().Direction.String()}
	switch {
	case IsRelayed(conn.RemoteMultiaddr()):
		c.h.log.Info("nat: relayed connection", append(args, "limited", conn.Stat().Limited)...)
	case hasRelayedConn(n, p):
		c.h.log.Info("nat: direct connection after a relayed one", args...)
	default:
		c.h.log.Debug("p2p: connected", args...)
	}
}

func (c *connLogger) Disconnected(network.Network, network.Conn) {}
func (c *connLogger) Listen(network.Network, ma.Multiaddr)       {}
func (c *connLogger) ListenClose(network.Network, ma.Multiaddr)  {}

func hasRelayedConn(n network.Network, p peer.ID) bool {
	for _, c := range n.ConnsToPeer(p) {
		if IsRelayed(c.RemoteMultiaddr()) {
			return true
		}
	}
	return false
}

// holePunchLogger logs DCUtR's outcomes: a direct dial to a peer that came
// through a relay (connection reversal) and hole punches.
type holePunchLogger struct{ log *slog.Logger }

// Trace implements holepunch.EventTracer.
func (l holePunchLogger) Trace(e *holepunch.Event) {
	switch ev := e.Evt.(type) {
	case *holepunch.DirectDialEvt:
		l.log.Info("nat: direct dial to a peer reached through a relay", "peer", e.Remote.String(),
			"ok", ev.Success, "took", ev.EllapsedTime, "err", ev.Error)
	case *holepunch.EndHolePunchEvt:
		l.log.Info("nat: hole punch", "peer", e.Remote.String(), "ok", ev.Success, "took", ev.EllapsedTime, "err", ev.Error)
	case *holepunch.ProtocolErrorEvt:
		l.log.Debug("nat: hole punch protocol error", "peer", e.Remote.String(), "err", ev.Error)
	}
}
