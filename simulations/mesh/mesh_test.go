package mesh

import (
	"errors"
	"log/slog"
	"math"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/nodecore"
	"github.com/tokenrouter/tokenrouter/simulations"
)

// metricNames are the metrics every run reports.
var metricNames = []string{
	"gossip_p50_ms", "gossip_p99_ms", "gossip_max_ms", "gossip_delivery_p50_ms", "gossip_changes",
	"gossip_missed_changes", "gossip_reach_share",
	"killed", "dead_removed_p50_ms", "dead_removed_p99_ms", "dead_removed_max_ms", "dead_missed_pairs",
	"dead_confirmed_p99_ms", "dead_disconnect_pairs", "dead_disconnect_p50_ms", "false_suspicions", "membership_layer",
	"bytes_per_peer_per_s", "gateway_bytes_per_s", "gateway_gossip_in_bytes_per_s", "gateway_gossip_out_bytes_per_s",
	"gateway_membership_bytes_per_s", "gateway_wire_bytes_per_s", "gateway_connections", "node_bytes_per_s",
	"node_membership_bytes_per_s", "node_connections", "bootstrap_bytes_per_s", "bootstrap_connections",
	"dropped_rpcs", "rejected_messages", "announcers", "announce_every_s", "announce_rate_per_s",
	"announcement_bytes", "bytes_per_announcement_on_wire", "gateway_messages_per_announcement",
	"gateway_ihave_ids_per_announcement", "gateway_iwant_ids_per_announcement", "duplicates_per_message",
	"gateway_gossip_in_bytes_per_s_at_10000", "gateway_gossip_in_bytes_per_s_at_10000_budget",
}

// CI's mesh: the built-in scenario's short form, 100 real libp2p hosts
// with GossipSub and the membership layer on the simulated network. A load
// change reaches 99% of gateways within 1 s and a killed node is reported
// by every gateway's membership within 3 s (the bounds, printed),
// and every metric is there and makes sense.
func TestMesh100(t *testing.T) {
	var sets []string
	if raceEnabled {
		// The race detector makes the run several times slower: fewer
		// hosts, a shorter window (the bounds are the same).
		sets = []string{"hosts=40", "gateways=6", "window=10s", "warmup=10s", "drain=6s"}
		// As go-libp2p-pubsub's own synctest tests do under -race.
		prev := runtime.GOMAXPROCS(1)
		t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	}
	spec, err := Load("mesh-1000", true, sets)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	sum, err := RunT(t, spec, Options{Seed: 1, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	m := sum.Metrics
	t.Logf("%s; gossip p99 %.0f ms (p50 %.0f), dead removed p99 %.0f ms (p50 %.0f); gateway %.0f B/s gossip in, %.0f B/s all; %.0f B per announcement",
		Describe(sum), m["gossip_p99_ms"], m["gossip_p50_ms"], m["dead_removed_p99_ms"], m["dead_removed_p50_ms"],
		m["gateway_gossip_in_bytes_per_s"], m["gateway_bytes_per_s"], m["bytes_per_announcement_on_wire"])
	for _, k := range metricNames {
		v, ok := m[k]
		if !ok || math.IsNaN(v) || v < 0 {
			t.Errorf("metric %s = %v (present %v)", k, v, ok)
		}
	}
	checkSane(t, spec, sum)
	for k, tg := range sum.Targets {
		if !tg.Met {
			t.Errorf("%s = %v, target %s", k, tg.Value, tg.Want)
		}
	}
}

// checkSane checks what must hold of any healthy run.
func checkSane(t *testing.T, spec *Spec, sum *simulations.Summary) {
	t.Helper()
	m := sum.Metrics
	latency := ms(spec.Latency.D())
	checks := []struct {
		what string
		ok   bool
	}{
		{"announcements were measured", sum.Requests > 0 && float64(sum.Requests) == m["gossip_changes"]},
		{"every change reached 99% of gateways", m["gossip_missed_changes"] == 0 && m["gossip_reach_share"] > 0.99},
		{"no change arrives faster than one link", m["gossip_p50_ms"] >= latency && m["gossip_delivery_p50_ms"] >= latency},
		{"gossip quantiles in order", m["gossip_p50_ms"] <= m["gossip_p99_ms"] && m["gossip_p99_ms"] <= m["gossip_max_ms"]},
		{"every kill seen by every gateway", m["killed"] == float64(spec.Kill) && m["dead_missed_pairs"] == 0},
		{"the membership layer ran", m["membership_layer"] == 1 && m["gateway_membership_bytes_per_s"] > 0},
		{"no live host suspected", m["false_suspicions"] == 0},
		{"a suspicion needs a failed probe", m["dead_removed_p50_ms"] >= latency},
		{"dead quantiles in order", m["dead_removed_p50_ms"] <= m["dead_removed_p99_ms"] && m["dead_removed_p99_ms"] <= m["dead_removed_max_ms"]},
		{"a gateway receives each announcement at least once", m["bytes_per_announcement_on_wire"] >= m["announcement_bytes"] && m["gateway_messages_per_announcement"] >= 1},
		{"the wire carries at least the streams", m["gateway_wire_bytes_per_s"] >= m["gateway_bytes_per_s"]},
		{"announcements fit the validator", m["announcement_bytes"] > 100 && m["rejected_messages"] == 0},
		{"the announce rate is the schedule's", math.Abs(m["announce_rate_per_s"]*m["announce_every_s"]/m["announcers"]-1) < 0.25},
		{"no queue overflowed", m["dropped_rpcs"] == 0},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("not so: %s", c.what)
		}
	}
}

func TestLoad(t *testing.T) {
	s, err := Load("mesh-1000", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Hosts != 1000 || s.Nodes() != 1000-s.Gateways-s.Bootstraps || s.Topics != TopicsSingle {
		t.Errorf("mesh-1000: %+v", s)
	}
	b := nodecore.DefaultGossipBudget()
	if every := s.Every(); every != b.Interval(s.Nodes()) || every <= b.Min || every >= b.Max {
		t.Errorf("budget interval at %d announcers: %v, want the live budget's %v, inside (%v, %v)", s.Nodes(), every, b.Interval(s.Nodes()), b.Min, b.Max)
	}
	short, err := Load("mesh-1000", true, []string{"topics=per-model", "models=4"})
	if err != nil {
		t.Fatal(err)
	}
	if short.Hosts != 100 || short.Topics != TopicsPerModel || short.Models != 4 || short.Every() != 5*time.Second {
		t.Errorf("short form with sets: %+v", short)
	}
	for _, bad := range [][]string{
		{"topics=some"}, {"gateways=0"}, {"kill=5000"}, {"hosts=2"}, {"latency=-1s"}, {"no_such=1"},
	} {
		if _, err := Load("mesh-1000", true, bad); err == nil {
			t.Errorf("%v: loaded", bad)
		}
	}
	if _, err := Load("fairness", false, nil); err == nil {
		t.Error("a discrete-event scenario loaded as a mesh one")
	}
	if _, err := simulations.Load("mesh-1000", false, nil); !errors.Is(err, simulations.ErrOtherEngine) {
		t.Errorf("simulations.Load(mesh-1000): %v, want ErrOtherEngine", err)
	}
	if !slices.Contains(simulations.NamesOf(simulations.EngineMesh), "mesh-1000") || slices.Contains(simulations.Names(), "mesh-1000") {
		t.Error("mesh-1000 listed with the wrong engine")
	}
}

func TestQuantile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	for _, c := range []struct{ q, want float64 }{{0.5, 3}, {0.99, 5}, {1, 5}, {0, 1}, {0.2, 1}, {0.21, 2}} {
		if got := quantile(xs, c.q); got != c.want {
			t.Errorf("quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if quantile(nil, 0.5) != 0 {
		t.Error("quantile of nothing")
	}
}

// Same seed, same identities (roles, topology and schedules come from the seed too).
func TestKeysAreSeeded(t *testing.T) {
	a, b := hostKeyIDs(t, 7), hostKeyIDs(t, 7)
	if !slices.Equal(a, b) {
		t.Fatal("same seed, different keys")
	}
	if c := hostKeyIDs(t, 8); slices.Equal(a, c) {
		t.Fatal("seeds 7 and 8 gave the same keys")
	}
}

func hostKeyIDs(t *testing.T, seed uint64) []string {
	var out []string
	for i := range 3 {
		k, err := hostKey(seed, i)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := k.Raw()
		out = append(out, string(raw))
	}
	return out
}
