package p2p

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
)

// simPeer is one host of the score simulation.
type simPeer struct {
	h      host.Host
	topic  *pubsub.Topic
	scores *AppScores
	seq    uint64
}

// role of a simulated peer.
const (
	simHonest     = iota // announces every second; one announcement a minute is rejected (a clock hiccup)
	simForger            // announces every second, and floods every peer with a forged, stale or oversized one a second
	simMeshForger        // the same, sent as GossipSub sends (to its mesh)
	simApp               // announces honestly; every honest peer's gateway penalises it half a unit a second
	simQuiet             // a gateway: forwards, never announces
)

// TestScoreSimulation validates the score parameters (score.go) on a mesh
// of real GossipSub hosts (mocknet, 50 ms links) in virtual time: a forger
// that floods every peer and an app-penalised liar fall under the graylist
// threshold in bounded time and recover minutes after they stop; a forger
// that sends as GossipSub does is pruned from every mesh; honest peers,
// each with one rejected announcement a minute, never come near a
// threshold. It prints the figures docs quote. 11 hosts: mocknet puts every
// host in one IPv6 /64, and more than 10 peers there would bring in the
// IP-colocation penalty, which is TestScoreColocation's subject.
func TestScoreSimulation(t *testing.T) {
	// One P, as go-libp2p-pubsub's synctest tests under the race detector,
	// whose runtime otherwise aborts in synctest bubbles this size.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	synctest.Test(t, func(t *testing.T) {
		const (
			honest   = 7
			lieUntil = 120 * time.Second // the liars stop lying then
			runFor   = 240 * time.Second
		)
		roles := make([]int, 0, honest+4)
		for range honest {
			roles = append(roles, simHonest)
		}
		roles = append(roles, simForger, simMeshForger, simApp, simQuiet)
		peers := startSimMesh(t, roles)
		observers := peers[:honest]
		liars := []struct {
			name string
			id   peer.ID
		}{
			{"forger (floods 1 rejected announcement/s)", peers[honest].h.ID()},
			{"mesh forger (the same, sent to its mesh)", peers[honest+1].h.ID()},
			{"app liar (0.5 units/s of lies seen by each gateway)", peers[honest+2].h.ID()},
		}
		forger, meshForger, app := liars[0].id, liars[1].id, liars[2].id

		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		start := time.Now()
		rnd := rand.New(rand.NewPCG(1, 2))
		for i, p := range peers {
			phase := time.Duration(rnd.Int64N(int64(time.Minute)))
			go simAnnounce(ctx, p, roles[i], phase, peers[0].h.ID(), start.Add(lieUntil))
		}
		go func() { // the gateways' observations of the app liar
			for now := range tickEvery(ctx, 2*time.Second) {
				if now.Sub(start) < lieUntil {
					for _, o := range observers {
						o.scores.Penalize(app, 1)
					}
				}
			}
		}()

		crossed := map[peer.ID]map[float64]time.Duration{}
		recovered := map[peer.ID]map[float64]time.Duration{} // after the liar stopped: back over graylist, back to 0
		lowest := map[peer.ID]float64{}
		minHonest, minQuiet, negative, samples := 0.0, 0.0, 0, 0
		thresholds := []float64{0, GossipThreshold, PublishThreshold, GraylistThreshold}
		t.Logf("%5s %8s %12s %9s %11s %9s", "t(s)", "forger", "mesh-forger", "app-liar", "min-honest", "quiet-gw")
		for time.Since(start) < runFor {
			time.Sleep(time.Second)
			el := time.Since(start)
			for _, l := range liars {
				s := medianScore(observers, l.id)
				lowest[l.id] = min(lowest[l.id], s)
				if crossed[l.id] == nil {
					crossed[l.id] = map[float64]time.Duration{}
				}
				for _, th := range thresholds {
					if _, ok := crossed[l.id][th]; !ok && s < th {
						crossed[l.id][th] = el
					}
				}
				if recovered[l.id] == nil {
					recovered[l.id] = map[float64]time.Duration{}
				}
				for _, th := range []float64{GraylistThreshold, 0} {
					if _, ok := recovered[l.id][th]; !ok && el > lieUntil && s >= th {
						recovered[l.id][th] = el - lieUntil
					}
				}
			}
			hs, neg, n := scoresOf(observers, peers[:honest])
			qs, _, _ := scoresOf(observers, peers[honest+3:])
			minHonest, minQuiet = min(minHonest, hs), min(minQuiet, qs)
			negative, samples = negative+neg, samples+n
			if int(el.Seconds())%20 == 0 {
				t.Logf("%5.0f %8.1f %12.1f %9.1f %11.1f %9.1f", el.Seconds(), medianScore(observers, forger),
					medianScore(observers, meshForger), medianScore(observers, app), hs, qs)
			}
		}
		cancel()
		// A graylisted peer's messages are dropped unread: a flooding
		// forger's count stops growing there and it hovers at the threshold.
		for _, l := range liars {
			at := func(m map[float64]time.Duration, th float64) string {
				if d, ok := m[th]; ok {
					return d.String()
				}
				return "never (in the run)"
			}
			t.Logf("%s: median score below 0 after %s, gossip threshold %s, publish %s, graylist %s; lowest %.0f; after it stopped, back over graylist in %s, to 0 in %s",
				l.name, at(crossed[l.id], 0), at(crossed[l.id], GossipThreshold), at(crossed[l.id], PublishThreshold),
				at(crossed[l.id], GraylistThreshold), lowest[l.id], at(recovered[l.id], GraylistThreshold), at(recovered[l.id], 0))
		}
		t.Logf("honest announcers (1 rejected announcement/min each): lowest score %.2f, below 0 in %.1f%% of (observer, peer, second) samples; quiet gateway: lowest %.2f",
			minHonest, 100*float64(negative)/float64(max(samples, 1)), minQuiet)

		if d, ok := crossed[forger][GraylistThreshold]; !ok || d > time.Minute {
			t.Errorf("the forger was not graylisted within a minute (%v, %v)", d, ok)
		}
		if d, ok := crossed[app][GraylistThreshold]; !ok || d > 2*time.Minute {
			t.Errorf("the app liar was not graylisted within two minutes (%v, %v)", d, ok)
		}
		if d, ok := crossed[meshForger][0]; !ok || d > 30*time.Second {
			t.Errorf("the mesh forger's score stayed above 0 for %v (%v)", d, ok)
		}
		for _, id := range []peer.ID{forger, app} {
			if d, ok := recovered[id][GraylistThreshold]; !ok || d > 3*time.Minute {
				t.Errorf("%s was not back over the graylist threshold within 3 minutes of stopping (%v)", id, d)
			}
		}
		// An honest announcer's rejected message reaches its mesh peers,
		// where time in the mesh and first deliveries (up to +20) absorb
		// it, and peers that fetch it by gossip, where it has no credit and
		// stands at -1 to -3 for minutes: never near a threshold.
		if minHonest < -10 || minQuiet < 0 {
			t.Errorf("an honest peer's score fell too low: announcers %.2f, gateway %.2f", minHonest, minQuiet)
		}
	})
}

// startSimMesh starts n GossipSub hosts on a mocknet with 50 ms links,
// every one connected to every other, each on the load topic with the
// load validator and scoring.
func startSimMesh(t *testing.T, roles []int) []*simPeer {
	t.Helper()
	n := len(roles)
	mn := mocknet.New()
	t.Cleanup(func() { mn.Close() })
	mn.SetLinkDefaults(mocknet.LinkOptions{Latency: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	peers := make([]*simPeer, n)
	for i := range peers {
		h, err := mn.GenPeer()
		if err != nil {
			t.Fatal(err)
		}
		s, err := NewAppScores(DefaultAppScoresConfig())
		if err != nil {
			t.Fatal(err)
		}
		ps, err := pubsub.NewGossipSub(ctx, h, append(s.Options(), pubsub.WithFloodPublish(roles[i] == simForger))...)
		if err != nil {
			t.Fatal(err)
		}
		if err := ps.RegisterTopicValidator(TopicLoad, lettingOwnOut(h.ID(), NewLoadValidator(nil))); err != nil {
			t.Fatal(err)
		}
		topic, err := ps.Join(TopicLoad)
		if err != nil {
			t.Fatal(err)
		}
		sub, err := topic.Subscribe()
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				if _, err := sub.Next(ctx); err != nil {
					return
				}
			}
		}()
		peers[i] = &simPeer{h: h, topic: topic, scores: s, seq: uint64(i) << 32}
	}
	if err := mn.LinkAll(); err != nil {
		t.Fatal(err)
	}
	if err := mn.ConnectAllButSelf(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second) // subscriptions spread, meshes form
	return peers
}

// lettingOwnOut is v for others' messages; a host's own pass, so the
// simulation's peers can send what other peers' validators reject.
func lettingOwnOut(self peer.ID, v pubsub.ValidatorEx) pubsub.ValidatorEx {
	return func(ctx context.Context, src peer.ID, m *pubsub.Message) pubsub.ValidationResult {
		if src == self {
			return pubsub.ValidationAccept
		}
		return v(ctx, src, m)
	}
}

// simAnnounce publishes p's announcements every second as its role says,
// until ctx ends; liars lie until stop. other is a peer a forger speaks for.
func simAnnounce(ctx context.Context, p *simPeer, role int, phase time.Duration, other peer.ID, stop time.Time) {
	if role == simQuiet {
		return
	}
	n := 0
	for now := range tickEvery(ctx, time.Second) {
		n++
		a := simAnnouncement(p, now)
		p.topic.Publish(ctx, mustJSON(a))
		lying := now.Before(stop)
		switch {
		case role == simHonest && n%60 == int(phase/time.Second):
			bad := simAnnouncement(p, now.Add(-MaxAnnouncementAge-StaleSlack-time.Second))
			p.topic.Publish(ctx, mustJSON(bad))
		case (role == simForger || role == simMeshForger) && lying:
			bad := simAnnouncement(p, now)
			switch n % 3 {
			case 0:
				bad.Node = other.String() // forged
			case 1:
				bad.TimeMs = now.Add(-time.Minute).UnixMilli() // stale
			case 2:
				bad.Hardware = strings.Repeat("x", MaxAnnouncement) // oversized
			}
			p.topic.Publish(ctx, mustJSON(bad))
		}
	}
}

func simAnnouncement(p *simPeer, at time.Time) Announcement {
	p.seq++
	return Announcement{
		Node: p.h.ID().String(), Platform: "platform", Addrs: []string{"/ip4/127.0.0.1/tcp/4001"},
		Models: []ModelLoad{{Model: "m", Capacity: 8, InFlight: int(p.seq % 8)}},
		TimeMs: at.UnixMilli(), Seq: p.seq,
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprint(err))
	}
	return b
}

// tickEvery yields the time every d until ctx ends.
func tickEvery(ctx context.Context, d time.Duration) func(func(time.Time) bool) {
	return func(yield func(time.Time) bool) {
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				if !yield(now) {
					return
				}
			}
		}
	}
}

// medianScore is the median of the observers' scores of id.
func medianScore(observers []*simPeer, id peer.ID) float64 {
	var s []float64
	for _, o := range observers {
		if v, ok := o.scores.PeerScore(id); ok {
			s = append(s, v)
		}
	}
	if len(s) == 0 {
		return 0
	}
	slices.Sort(s)
	return s[len(s)/2]
}

// scoresOf is the lowest score any observer gives any of peers, and how
// many of those scores are below 0, of how many.
func scoresOf(observers, peers []*simPeer) (lowest float64, negative, n int) {
	for _, o := range observers {
		for _, p := range peers {
			if v, ok := o.scores.PeerScore(p.h.ID()); ok && o != p {
				lowest = min(lowest, v)
				n++
				if v < 0 {
					negative++
				}
			}
		}
	}
	return lowest, negative, n
}
