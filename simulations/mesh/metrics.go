package mesh

import (
	"math"
	"slices"
	"time"

	"github.com/tokenrouter/tokenrouter/nodecore"
)

// outcome turns what the recorder and the counters saw into the
// summary's metrics (all times in virtual milliseconds, bytes per virtual
// second over the window).
func (w *world) outcome(before, after sample, end time.Time) *outcome {
	m := map[string]float64{}
	w.gossipMetrics(m, end)
	w.deadMetrics(m, end)
	published := w.bandwidthMetrics(m, before, after)
	for k, v := range m {
		m[k] = round6(v)
	}
	return &outcome{metrics: m, published: published}
}

// gossipMetrics: for each load change published in the window, the time
// until 99% of gateways had it (never: the time to the end of the run, and
// counted in gossip_missed_changes); p50 and p99 over changes.
func (w *world) gossipMetrics(m map[string]float64, end time.Time) {
	r := w.rec
	r.mu.Lock()
	defer r.mu.Unlock()
	gws := len(w.gateways)
	need := int(math.Ceil(0.99 * float64(gws)))
	var t99, all []float64
	var reach float64
	missed := 0
	for _, c := range r.changes {
		got := slices.Clone(c.got)
		slices.Sort(got)
		for _, d := range got {
			all = append(all, ms(d))
		}
		reach += float64(len(got)) / float64(gws)
		if len(got) >= need {
			t99 = append(t99, ms(got[need-1]))
		} else {
			t99 = append(t99, ms(end.Sub(c.at)))
			missed++
		}
	}
	m["gossip_p50_ms"] = quantile(t99, 0.50)
	m["gossip_p99_ms"] = quantile(t99, 0.99)
	m["gossip_max_ms"] = quantile(t99, 1)
	m["gossip_delivery_p50_ms"] = quantile(all, 0.50) // over (change, gateway) pairs
	m["gossip_changes"] = float64(len(r.changes))
	m["gossip_missed_changes"] = float64(missed)
	if len(r.changes) > 0 {
		m["gossip_reach_share"] = reach / float64(len(r.changes))
	}
}

// deadMetrics: for each killed node and each gateway, the time until the
// gateway's membership reported it Suspect or Dead (never: the time to the
// end of the run, counted in dead_missed_pairs). Without the membership
// layer, the time until the gateway lost its last libp2p connection to it.
func (w *world) deadMetrics(m map[string]float64, end time.Time) {
	r := w.rec
	r.mu.Lock()
	defer r.mu.Unlock()
	src := r.down
	if !membershipBuiltIn || !w.spec.Membership {
		src = r.discon
	}
	var down, dead, discon []float64
	missed := 0
	for id, at := range r.killed {
		for _, g := range w.gateways {
			k := pairKey{g.idx, id}
			if t, ok := src[k]; ok {
				down = append(down, ms(t.Sub(at)))
			} else {
				down = append(down, ms(end.Sub(at)))
				missed++
			}
			if t, ok := r.dead[k]; ok {
				dead = append(dead, ms(t.Sub(at)))
			}
			if t, ok := r.discon[k]; ok {
				discon = append(discon, ms(t.Sub(at)))
			}
		}
	}
	m["killed"] = float64(len(r.killed))
	m["dead_removed_p50_ms"] = quantile(down, 0.50)
	m["dead_removed_p99_ms"] = quantile(down, 0.99)
	m["dead_removed_max_ms"] = quantile(down, 1)
	m["dead_missed_pairs"] = float64(missed)
	m["dead_confirmed_p99_ms"] = quantile(dead, 0.99) // Dead, not only Suspect
	m["dead_disconnect_pairs"] = float64(len(discon))
	m["dead_disconnect_p50_ms"] = quantile(discon, 0.50)
	m["false_suspicions"] = float64(len(r.falseDown))
	m["membership_layer"] = 0
	if membershipBuiltIn && w.spec.Membership {
		m["membership_layer"] = 1
	}
}

// bandwidthMetrics: bytes over the window from each host's libp2p
// bandwidth reporter (stream bytes by protocol) and its simulated UDP
// endpoint (QUIC on the wire); GossipSub message counts from its tracer.
// It returns the load changes published in the window.
func (w *world) bandwidthMetrics(m map[string]float64, before, after sample) int64 {
	secs := after.at.Sub(before.at).Seconds()
	w.rec.mu.Lock()
	published, annBytes := int64(len(w.rec.changes)), w.rec.annBytes
	w.rec.mu.Unlock()
	type sums struct{ all, gossipIn, gossipOut, member, wire, conns float64 }
	perRole := map[role]*sums{roleNode: {}, roleGateway: {}, roleBootstrap: {}}
	var gw gossipCounts
	var dropped, rejected int64
	for i, sh := range w.hosts {
		t := after.bytes[i].minus(before.bytes[i])
		in, out := t.total()
		s := perRole[sh.role]
		s.all += float64(in+out) / secs
		s.gossipIn += float64(t.in[classGossip]) / secs
		s.gossipOut += float64(t.out[classGossip]) / secs
		s.member += float64(t.in[classMember]+t.out[classMember]) / secs
		s.wire += float64(after.wire[i].BytesSent+after.wire[i].BytesRcvd-before.wire[i].BytesSent-before.wire[i].BytesRcvd) / secs
		s.conns += float64(after.conns[i])
		g := after.gossip[i].minus(before.gossip[i])
		dropped += g.dropped
		rejected += g.rejected
		if sh.role == roleGateway {
			gw = gossipCounts{
				gw.rpcMessages + g.rpcMessages, gw.ihave + g.ihave, gw.iwant + g.iwant, gw.delivered + g.delivered,
				gw.duplicates + g.duplicates, 0, 0, 0, 0,
			}
		}
	}
	count := map[role]float64{roleNode: float64(len(w.nodes)), roleGateway: float64(len(w.gateways)), roleBootstrap: float64(len(w.bootstraps))}
	var total float64
	for _, s := range perRole {
		total += s.all
	}
	m["bytes_per_peer_per_s"] = total / float64(len(w.hosts))
	m["gateway_bytes_per_s"] = perRole[roleGateway].all / count[roleGateway]
	m["gateway_gossip_in_bytes_per_s"] = perRole[roleGateway].gossipIn / count[roleGateway]
	m["gateway_gossip_out_bytes_per_s"] = perRole[roleGateway].gossipOut / count[roleGateway]
	m["gateway_membership_bytes_per_s"] = perRole[roleGateway].member / count[roleGateway]
	m["gateway_wire_bytes_per_s"] = perRole[roleGateway].wire / count[roleGateway]
	m["gateway_connections"] = perRole[roleGateway].conns / count[roleGateway]
	m["node_bytes_per_s"] = perRole[roleNode].all / count[roleNode]
	m["node_membership_bytes_per_s"] = perRole[roleNode].member / count[roleNode]
	m["node_connections"] = perRole[roleNode].conns / count[roleNode]
	m["bootstrap_bytes_per_s"] = perRole[roleBootstrap].all / count[roleBootstrap]
	m["bootstrap_connections"] = perRole[roleBootstrap].conns / count[roleBootstrap]
	m["dropped_rpcs"] = float64(dropped)
	m["rejected_messages"] = float64(rejected)

	// The formula's inputs: a gateway's load-topic bytes per second are
	// announcers × (announcements per announcer per second) × bytes per
	// announcement on the wire.
	m["announcers"] = float64(len(w.nodes))
	m["announce_every_s"] = w.spec.Every().Seconds()
	m["announce_rate_per_s"] = float64(published) / secs
	if published > 0 {
		m["announcement_bytes"] = float64(annBytes) / float64(published)
		perGw := 1 / count[roleGateway] / float64(published)
		m["bytes_per_announcement_on_wire"] = m["gateway_gossip_in_bytes_per_s"] * secs / float64(published)
		m["gateway_messages_per_announcement"] = float64(gw.rpcMessages) * perGw
		m["gateway_ihave_ids_per_announcement"] = float64(gw.ihave) * perGw
		m["gateway_iwant_ids_per_announcement"] = float64(gw.iwant) * perGw
		if gw.delivered > 0 {
			m["duplicates_per_message"] = float64(gw.duplicates) / float64(gw.delivered)
		}
		perAnnouncer := m["announce_rate_per_s"] / m["announcers"]
		m["gateway_gossip_in_bytes_per_s_at_10000"] = 10_000 * perAnnouncer * m["bytes_per_announcement_on_wire"]
		// What the live gossip budget's interval at 10,000 announcers
		// (nodecore.GossipBudget.Interval) would cost a gateway at the
		// measured bytes per announcement.
		b := nodecore.DefaultGossipBudget()
		b.CostEach = m["bytes_per_announcement_on_wire"]
		m["gateway_gossip_in_bytes_per_s_at_10000_budget"] = b.BytesPerGateway(10_000, nodecore.DefaultGossipBudget().Interval(10_000))
	}
	return published
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// quantile is the nearest-rank q-quantile of xs (0 for none).
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// round6 keeps six significant digits, so summaries read cleanly.
func round6(v float64) float64 {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return v
	}
	p := math.Pow(10, 6-math.Ceil(math.Log10(math.Abs(v))))
	if p < 1 {
		return math.Round(v)
	}
	return math.Round(v*p) / p
}
