package mesh

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/marcopolo/simnet"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// world is one run: the simulated network, its hosts and what they saw.
type world struct {
	spec   *Spec
	seed   uint64
	log    *slog.Logger
	rng    *rand.Rand // topology, roles, schedules and kills, from the seed
	nw     *simnet.Simnet
	topics []string
	start  time.Time // virtual time the run began

	hosts      []*simHost
	bootstraps []*simHost
	gateways   []*simHost
	nodes      []*simHost

	rec *recorder
	wg  sync.WaitGroup // every goroutine the run starts
}

// gossipState is a host's GossipSub side.
type gossipState struct {
	ps     *pubsub.PubSub
	topics []*pubsub.Topic // index as world.topics
	count  gossipCounter
}

// newWorld builds the network and every host on it (none connected yet).
// Roles are drawn from the seed: the first Bootstraps indices are the
// bootstrap peers, Gateways others are drawn at random, the rest are nodes.
func newWorld(ctx context.Context, spec *Spec, seed uint64, log *slog.Logger) (*world, error) {
	w := &world{
		spec:  spec,
		seed:  seed,
		log:   log,
		rng:   rand.New(rand.NewPCG(seed, 0x6d657368)),
		nw:    newSimnet(spec.Latency.D(), log),
		start: time.Now(),
		rec:   newRecorder(),
	}
	w.topics = []string{p2p.TopicLoad}
	if spec.Topics == TopicsPerModel {
		w.topics = w.topics[:0]
		for m := range spec.Models {
			w.topics = append(w.topics, p2p.TopicLoad+"/"+modelName(m))
		}
	}
	roles := w.drawRoles()
	bps := spec.BandwidthMbps * 1_000_000
	link := simnet.NodeBiDiLinkSettings{
		Downlink: simnet.LinkSettings{BitsPerSecond: bps},
		Uplink:   simnet.LinkSettings{BitsPerSecond: bps},
	}
	for i := range spec.Hosts {
		conns, err := connManager(spec, roles[i])
		if err != nil {
			w.close()
			return nil, err
		}
		sh, err := newSimHost(w.nw, link, seed, i, conns)
		if err != nil {
			w.close()
			return nil, err
		}
		sh.role = roles[i]
		w.hosts = append(w.hosts, sh)
		switch sh.role {
		case roleBootstrap:
			w.bootstraps = append(w.bootstraps, sh)
		case roleGateway:
			w.gateways = append(w.gateways, sh)
		default:
			sh.model = len(w.nodes) % spec.Models
			w.nodes = append(w.nodes, sh)
		}
	}
	w.nw.Start()
	for _, sh := range w.hosts {
		sh.ctx, sh.stop = context.WithCancel(ctx)
		if err := w.startGossip(sh.ctx, sh); err != nil {
			w.close()
			return nil, err
		}
		if err := w.startMembership(sh); err != nil {
			w.close()
			return nil, err
		}
		if sh.role == roleGateway {
			w.watchDisconnects(sh)
		}
	}
	return w, nil
}

func (w *world) drawRoles() []role {
	s := w.spec
	roles := make([]role, s.Hosts)
	for i := range s.Bootstraps {
		roles[i] = roleBootstrap
	}
	rest := w.rng.Perm(s.Hosts - s.Bootstraps)
	for _, j := range rest[:s.Gateways] {
		roles[s.Bootstraps+j] = roleGateway
	}
	return roles
}

// startGossip starts GossipSub on sh as the live p2p.Host does (peer
// exchange on bootstrap peers, the live message size limit), joins the
// load topic(s) through the live validator and subscribes where the live
// role does: gateways and bootstrap peers subscribe; nodes only publish
// (they reach the topic's mesh through fanout) unless nodes_subscribe.
func (w *world) startGossip(ctx context.Context, sh *simHost) error {
	opts := []pubsub.Option{
		pubsub.WithPeerExchange(sh.role == roleBootstrap),
		pubsub.WithMaxMessageSize(p2p.MaxGossipMessage),
		pubsub.WithRawTracer(&sh.gossip.count),
	}
	if w.spec.FloodPublish != nil {
		opts = append(opts, pubsub.WithFloodPublish(*w.spec.FloodPublish))
	}
	scoring, err := scoreOptions(w.bootstrapIDs(nil))
	if err != nil {
		return err
	}
	ps, err := pubsub.NewGossipSub(ctx, sh.h, append(scoring, opts...)...)
	if err != nil {
		return fmt.Errorf("mesh: gossipsub on host %d: %w", sh.idx, err)
	}
	sh.gossip.ps = ps
	for _, name := range w.topics {
		t, err := joinLoadTopic(ps, name)
		if err != nil {
			return fmt.Errorf("mesh: host %d joins %s: %w", sh.idx, name, err)
		}
		sh.gossip.topics = append(sh.gossip.topics, t)
	}
	if sh.role == roleNode && !w.spec.NodesSubscribe {
		return nil
	}
	for _, t := range sh.gossip.topics {
		sub, err := t.Subscribe()
		if err != nil {
			return fmt.Errorf("mesh: host %d subscribes: %w", sh.idx, err)
		}
		w.wg.Add(1)
		go w.read(ctx, sh, sub)
	}
	return nil
}

// startMembership starts the membership layer on sh when the scenario
// asks for it; a gateway's reports go to the recorder.
func (w *world) startMembership(sh *simHost) error {
	if !w.spec.Membership {
		return nil
	}
	var down downFunc
	if sh.role == roleGateway {
		down = func(p peer.ID, state string, at time.Time) { w.rec.reported(sh.idx, p, state, at) }
	}
	m, err := startMembership(sh.ctx, sh.h, w.log, down)
	if err != nil {
		return fmt.Errorf("mesh: membership on host %d: %w", sh.idx, err)
	}
	sh.member = m
	return nil
}

// read takes sh's deliveries; a gateway's are recorded.
func (w *world) read(ctx context.Context, sh *simHost, sub *pubsub.Subscription) {
	defer w.wg.Done()
	defer sub.Cancel()
	for {
		m, err := sub.Next(ctx)
		if err != nil {
			return
		}
		if sh.role != roleGateway {
			continue
		}
		if a, ok := m.ValidatorData.(*p2p.Announcement); ok {
			w.rec.received(sh.idx, a.Node, a.Seq, time.Now())
		}
	}
}

// watchDisconnects records, on a gateway, when it loses its last
// connection to a peer (the libp2p signal the live gateway also uses).
func (w *world) watchDisconnects(sh *simHost) {
	sh.h.Network().Notify(&network.NotifyBundle{
		DisconnectedF: func(n network.Network, c network.Conn) {
			p := c.RemotePeer()
			if n.Connectedness(p) == network.Connected {
				return
			}
			w.rec.disconnected(sh.idx, p, time.Now())
		},
	})
}

// bootstrapIDs lists the bootstrap peers but except.
func (w *world) bootstrapIDs(except *simHost) []peer.ID {
	var ids []peer.ID
	for _, b := range w.bootstraps {
		if b != except {
			ids = append(ids, b.h.ID())
		}
	}
	return ids
}

// lingerAfterClose outlasts memberlist's longest timer in a probe (the
// stream fallback's StreamTimeout).
const lingerAfterClose = 15 * time.Second

// close stops every host and the network, and waits for the run's
// goroutines: all of them must end before the bubble's root does, since
// virtual time stops with it (a membership's leave waits on a timer).
func (w *world) close() {
	for _, sh := range w.hosts {
		if sh.stop != nil {
			sh.stop()
		}
	}
	w.wg.Wait()
	for _, sh := range w.hosts {
		if !sh.dead.Load() { // else closed when killed
			sh.h.Close()
		}
	}
	for _, sh := range w.hosts {
		if sh.member != nil {
			sh.member.wait()
		}
	}
	// memberlist's Shutdown does not wait for probes in flight: let their
	// timers (the stream fallback's is the longest) run out.
	time.Sleep(lingerAfterClose)
	w.nw.Close()
}
