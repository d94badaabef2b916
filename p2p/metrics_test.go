package p2p

import (
	"context"
	"testing"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
)

// A topic's validator verdicts on messages from other peers are counted;
// the host's own publications are not gossip received. Each role's
// collector reads the same counts under its own name.
func TestGossipCounts(t *testing.T) {
	h := newTestHost(t)
	verdict := pubsub.ValidationAccept
	v := h.counted("t/1", func(context.Context, peer.ID, *pubsub.Message) pubsub.ValidationResult { return verdict })
	_, other := testkit.RandomPeer(t)
	for _, r := range []pubsub.ValidationResult{pubsub.ValidationAccept, pubsub.ValidationAccept, pubsub.ValidationReject, pubsub.ValidationIgnore} {
		verdict = r
		if got := v(context.Background(), other, &pubsub.Message{}); got != r {
			t.Fatalf("the wrapper changed the verdict %v to %v", r, got)
		}
	}
	verdict = pubsub.ValidationAccept
	v(context.Background(), h.ID(), &pubsub.Message{}) // published here
	want := map[string]uint64{VerdictAccepted: 2, VerdictRejected: 1, VerdictIgnored: 1}
	got := h.GossipCounts()
	if len(got) != 3 {
		t.Fatalf("counts %+v", got)
	}
	for _, c := range got {
		if c.Topic != "t/1" || c.N != want[c.Verdict] {
			t.Fatalf("counts %+v, want %v on t/1", got, want)
		}
	}

	for _, role := range []string{"gateway", "node"} {
		reg := prometheus.NewRegistry()
		reg.MustRegister(h.Collector(role))
		fams, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]float64{}
		for _, f := range fams {
			for _, m := range f.GetMetric() {
				seen[f.GetName()] += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
		prefix := "tokenrouter_" + role + "_"
		if seen[prefix+"gossip_messages_total"] != 4 {
			t.Fatalf("%s: %v", role, seen)
		}
		if _, ok := seen[prefix+"connected_peers"]; !ok {
			t.Fatalf("%s: no connected_peers in %v", role, seen)
		}
		if _, ok := seen[prefix+"relay_reservations"]; ok {
			t.Fatalf("%s: a host without a relay service reports reservations", role)
		}
	}
}
