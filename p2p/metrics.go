package p2p

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	pbv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/pb"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/prometheus/client_golang/prometheus"
)

// What a host counts for /metrics. The host is shared by every role in its
// process, so it keeps plain counters and each role's own registry reads
// them through Collector: no role registers anything twice, and no host
// touches Prometheus's global registry (several hosts share a process in
// dev and tests).

// Verdicts of a topic validator, as metrics label them.
const (
	VerdictAccepted = "accepted"
	VerdictRejected = "rejected" // costs the forwarding peer score (P4)
	VerdictIgnored  = "ignored"
)

// verdicts counts one topic's validator verdicts on messages received
// from other peers (not those this host published itself).
type verdicts struct {
	accepted, rejected, ignored atomic.Uint64
}

func (v *verdicts) add(r pubsub.ValidationResult) {
	switch r {
	case pubsub.ValidationAccept:
		v.accepted.Add(1)
	case pubsub.ValidationReject:
		v.rejected.Add(1)
	default:
		v.ignored.Add(1)
	}
}

// hostStats is what a Host counts for its roles' metrics.
type hostStats struct {
	mu     sync.Mutex
	gossip map[string]*verdicts // by topic
	relay  *relayStats          // nil unless the host offers circuit relay
}

// counted wraps topic name's validator so that its verdicts on messages
// from other peers are counted. A message this host publishes passes its
// own validator with itself as source; that is not gossip received.
func (h *Host) counted(name string, v pubsub.ValidatorEx) pubsub.ValidatorEx {
	h.stats.mu.Lock()
	if h.stats.gossip == nil {
		h.stats.gossip = map[string]*verdicts{}
	}
	c := h.stats.gossip[name]
	if c == nil {
		c = &verdicts{}
		h.stats.gossip[name] = c
	}
	h.stats.mu.Unlock()
	self := h.ID()
	return func(ctx context.Context, src peer.ID, m *pubsub.Message) pubsub.ValidationResult {
		r := v(ctx, src, m)
		if src != self {
			c.add(r)
		}
		return r
	}
}

// GossipCount is how many messages of one topic this host's validator
// judged one way.
type GossipCount struct {
	Topic   string
	Verdict string // VerdictAccepted, VerdictRejected or VerdictIgnored
	N       uint64
}

// GossipCounts returns the validator verdicts on gossip received so far,
// by topic (sorted) and verdict.
func (h *Host) GossipCounts() []GossipCount {
	h.stats.mu.Lock()
	defer h.stats.mu.Unlock()
	out := make([]GossipCount, 0, 3*len(h.stats.gossip))
	for topic, v := range h.stats.gossip {
		out = append(out,
			GossipCount{topic, VerdictAccepted, v.accepted.Load()},
			GossipCount{topic, VerdictRejected, v.rejected.Load()},
			GossipCount{topic, VerdictIgnored, v.ignored.Load()})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Topic < out[j].Topic })
	return out
}

// relayStats counts what a circuit relay v2 service does (libp2p's
// relay.MetricsTracer, without libp2p's global collectors).
type relayStats struct {
	reservations atomic.Int64  // open now
	circuits     atomic.Int64  // relayed connections open now
	refused      atomic.Uint64 // reservation requests refused or failed
	bytes        atomic.Uint64 // relayed
}

var _ relayv2.MetricsTracer = (*relayStats)(nil)

func (r *relayStats) RelayStatus(bool)                     {}
func (r *relayStats) ConnectionOpened()                    { r.circuits.Add(1) }
func (r *relayStats) ConnectionClosed(time.Duration)       { r.circuits.Add(-1) }
func (r *relayStats) ConnectionRequestHandled(pbv2.Status) {}
func (r *relayStats) ReservationClosed(cnt int)            { r.reservations.Add(-int64(cnt)) }
func (r *relayStats) BytesTransferred(cnt int)             { r.bytes.Add(uint64(cnt)) }
func (r *relayStats) ReservationAllowed(renewal bool) {
	if !renewal {
		r.reservations.Add(1)
	}
}
func (r *relayStats) ReservationRequestHandled(s pbv2.Status) {
	if s != pbv2.Status_OK {
		r.refused.Add(1)
	}
}

// Collector returns a Prometheus collector of what h sees, its metrics
// named tokenrouter_<role>_...: gossip messages received by topic and
// verdict, peers subscribed to each topic, connected peers, the DHT's
// routing table, live members, and for a relay service (bootstrap peers)
// its reservations and circuits. Values are read at scrape time. Each
// role registers one in its own registry.
func (h *Host) Collector(role string) prometheus.Collector {
	p := "tokenrouter_" + role + "_"
	c := &hostCollector{
		h:         h,
		gossip:    prometheus.NewDesc(p+"gossip_messages_total", "Gossip messages received from other peers, by topic and validator verdict (rejected ones cost the forwarder score).", []string{"topic", "verdict"}, nil),
		topicPeer: prometheus.NewDesc(p+"gossip_topic_peers", "Connected peers subscribed to each gossip topic.", []string{"topic"}, nil),
		peers:     prometheus.NewDesc(p+"connected_peers", "libp2p peers connected now.", nil, nil),
		dht:       prometheus.NewDesc(p+"dht_routing_table_peers", "Peers in the DHT routing table.", nil, nil),
		members:   prometheus.NewDesc(p+"members", "Peers membership (SWIM) believes alive, this one included.", nil, nil),
	}
	if h.stats.relay != nil {
		c.rsv = prometheus.NewDesc(p+"relay_reservations", "Circuit relay v2 reservations held open for peers behind NAT.", nil, nil)
		c.circ = prometheus.NewDesc(p+"relay_circuits", "Relayed connections open now.", nil, nil)
		c.refused = prometheus.NewDesc(p+"relay_reservations_refused_total", "Relay reservation requests refused or failed.", nil, nil)
		c.bytes = prometheus.NewDesc(p+"relay_bytes_total", "Bytes relayed.", nil, nil)
	}
	return c
}

type hostCollector struct {
	h                                      *Host
	gossip, topicPeer, peers, dht, members *prometheus.Desc
	rsv, circ, refused, bytes              *prometheus.Desc // nil without a relay service
}

func (c *hostCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.gossip, c.topicPeer, c.peers, c.dht, c.members, c.rsv, c.circ, c.refused, c.bytes} {
		if d != nil {
			ch <- d
		}
	}
}

func (c *hostCollector) Collect(ch chan<- prometheus.Metric) {
	h := c.h
	for _, g := range h.GossipCounts() {
		ch <- prometheus.MustNewConstMetric(c.gossip, prometheus.CounterValue, float64(g.N), g.Topic, g.Verdict)
	}
	h.topicMu.Lock()
	topics := make([]string, 0, len(h.topics))
	for name := range h.topics {
		topics = append(topics, name)
	}
	h.topicMu.Unlock()
	for _, name := range topics {
		ch <- prometheus.MustNewConstMetric(c.topicPeer, prometheus.GaugeValue, float64(len(h.PubSub.ListPeers(name))), name)
	}
	ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(len(h.Network().Peers())))
	if h.dht != nil {
		ch <- prometheus.MustNewConstMetric(c.dht, prometheus.GaugeValue, float64(h.dht.RoutingTable().Size()))
	}
	if h.Members != nil {
		ch <- prometheus.MustNewConstMetric(c.members, prometheus.GaugeValue, float64(h.Members.NumMembers()))
	}
	if r := h.stats.relay; r != nil && c.rsv != nil {
		ch <- prometheus.MustNewConstMetric(c.rsv, prometheus.GaugeValue, float64(max(r.reservations.Load(), 0)))
		ch <- prometheus.MustNewConstMetric(c.circ, prometheus.GaugeValue, float64(max(r.circuits.Load(), 0)))
		ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(r.refused.Load()))
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(r.bytes.Load()))
	}
}
