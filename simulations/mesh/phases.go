package mesh

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// redialEvery is how often a host redials bootstrap peers it lost: the
// live p2p.Host's default.
const redialEvery = 2 * time.Second

// dialTimeout bounds one dial, as the live host's bootstrap dials.
const dialTimeout = 5 * time.Second

// plan is everything drawn from the seed before the run starts, so that
// goroutine scheduling cannot change it.
type plan struct {
	joinAt  []time.Duration // per host: when it starts dialling
	peers   [][]int         // per host: the random other hosts it dials
	phase   []time.Duration // per host: a node's first announcement, after it joined
	victims []int           // hosts killed, in order
}

func (w *world) draw() plan {
	s := w.spec
	p := plan{
		joinAt: make([]time.Duration, s.Hosts),
		peers:  make([][]int, s.Hosts),
		phase:  make([]time.Duration, s.Hosts),
	}
	order := w.rng.Perm(s.Hosts)
	for rank, i := range order {
		if w.hosts[i].role == roleBootstrap {
			continue // bootstrap peers are up from the start
		}
		p.joinAt[i] = time.Duration(int64(s.JoinOver.D()) * int64(rank) / int64(s.Hosts))
	}
	every := s.Every()
	for i := range s.Hosts {
		seen := map[int]bool{i: true}
		for len(p.peers[i]) < s.PeersPerHost {
			j := w.rng.IntN(s.Hosts)
			if !seen[j] {
				seen[j] = true
				p.peers[i] = append(p.peers[i], j)
			}
		}
		p.phase[i] = time.Duration(w.rng.Int64N(int64(every)))
	}
	for _, k := range w.rng.Perm(len(w.nodes))[:s.Kill] {
		p.victims = append(p.victims, w.nodes[k].idx)
	}
	return p
}

// startHosts starts every host's life: join at its time, dial the
// bootstrap peers and its random peers, join the membership layer, keep
// the bootstrap connections up, and (nodes) announce.
func (w *world) startHosts(p plan) {
	for _, sh := range w.hosts {
		w.wg.Add(1)
		go w.life(sh, p)
	}
}

func (w *world) life(sh *simHost, p plan) {
	defer w.wg.Done()
	ctx := sh.ctx
	if !sleep(ctx, p.joinAt[sh.idx]) {
		return
	}
	w.dialBootstraps(ctx, sh)
	w.joinMembers(ctx, sh)
	var dials sync.WaitGroup
	for _, j := range p.peers[sh.idx] {
		dials.Add(1)
		go func(other *simHost) {
			defer dials.Done()
			w.dial(ctx, sh, other)
		}(w.hosts[j])
	}
	dials.Wait()
	if sh.role == roleNode {
		w.wg.Add(1)
		go w.announce(sh, p.phase[sh.idx])
	}
	t := time.NewTicker(redialEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.dialBootstraps(ctx, sh)
			w.joinMembers(ctx, sh)
		}
	}
}

// joinMembers joins the bootstrap peers' membership while sh knows no
// other member (the live host's keepMembership).
func (w *world) joinMembers(ctx context.Context, sh *simHost) {
	if sh.member == nil || len(w.bootstraps) == 1 && sh.role == roleBootstrap {
		return
	}
	if err := sh.member.join(ctx, w.bootstrapIDs(sh)); err != nil && ctx.Err() == nil {
		w.log.Debug("membership join failed", "host", sh.idx, "err", err)
	}
}

func (w *world) dialBootstraps(ctx context.Context, sh *simHost) {
	var wg sync.WaitGroup
	for _, b := range w.bootstraps {
		if b == sh || sh.h.Network().Connectedness(b.h.ID()) == network.Connected {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.dial(ctx, sh, b)
		}()
	}
	wg.Wait()
}

func (w *world) dial(ctx context.Context, from, to *simHost) {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if err := from.h.Connect(dctx, to.info); err != nil && ctx.Err() == nil && !to.dead.Load() {
		w.log.Debug("dial failed", "from", from.idx, "to", to.idx, "err", err)
	}
}

// announce publishes a node's load every Spec.Every(), first after phase:
// the live p2p.Announcement, marshalled as the live node does, with a
// load that changes every time.
func (w *world) announce(sh *simHost, phase time.Duration) {
	defer w.wg.Done()
	ctx := sh.ctx
	every := w.spec.Every()
	rng := rand.New(rand.NewPCG(w.seed, uint64(sh.idx)))
	seq := rng.Uint64() >> 1
	topic := sh.gossip.topics[0]
	if w.spec.Topics == TopicsPerModel {
		topic = sh.gossip.topics[sh.model]
	}
	a := p2p.Announcement{
		Node:      sh.h.ID().String(),
		Platform:  w.bootstraps[0].h.ID().String(),
		Hardware:  "NVIDIA GeForce RTX 4090 24GB",
		TokPerSec: 40 + float64(rng.IntN(800))/10,
		EveryMs:   every.Milliseconds(),
	}
	for _, addr := range sh.info.Addrs {
		a.Addrs = append(a.Addrs, addr.String()+"/p2p/"+a.Node)
	}
	if !sleep(ctx, phase) {
		return
	}
	for {
		seq++
		a.Seq = seq
		a.TimeMs = time.Now().UnixMilli()
		a.Models = []p2p.ModelLoad{w.load(rng, sh.model)}
		data, err := json.Marshal(a)
		if err != nil {
			panic(err) // an Announcement always marshals
		}
		w.rec.published(a.Node, a.Seq, len(data), time.Now())
		if err := topic.Publish(ctx, data); err != nil && ctx.Err() == nil {
			w.log.Debug("publish failed", "host", sh.idx, "err", err)
		}
		if !sleep(ctx, every) {
			return
		}
	}
}

// load is a node's instance with a fresh count of calls in flight, split
// by the gateways that sent them, as the live node announces it.
func (w *world) load(rng *rand.Rand, model int) p2p.ModelLoad {
	const capacity = 8
	m := p2p.ModelLoad{Model: modelName(model), Capacity: capacity, InFlight: rng.IntN(capacity + 1)}
	left := m.InFlight
	for left > 0 {
		n := 1 + rng.IntN(left)
		gw := w.gateways[rng.IntN(len(w.gateways))].h.ID().String()
		if m.InFlightBy == nil {
			m.InFlightBy = map[string]int{}
		}
		m.InFlightBy[gw] += n
		left -= n
	}
	return m
}

// killAll kills the victims without a goodbye, spread over kill_over.
func (w *world) killAll(ctx context.Context, victims []int) {
	if len(victims) == 0 {
		return
	}
	gap := w.spec.KillOver.D() / time.Duration(len(victims))
	for _, i := range victims {
		sh := w.hosts[i]
		w.rec.kill(sh.h.ID(), time.Now())
		sh.kill()
		if !sleep(ctx, gap) {
			return
		}
	}
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

var modelNames = []string{
	"llama-3.1-8b-instruct", "llama-3.3-70b-instruct", "qwen2.5-32b-instruct", "mistral-small-24b-instruct",
	"gemma-3-27b-it", "deepseek-r1-distill-qwen-32b", "phi-4", "qwen2.5-coder-32b-instruct",
	"llama-3.2-3b-instruct", "mixtral-8x7b-instruct",
}

// modelName is the m-th model's name (realistic lengths: they are on the wire).
func modelName(m int) string {
	if m < len(modelNames) {
		return modelNames[m]
	}
	return modelNames[m%len(modelNames)] + "-v" + strconv.Itoa(m/len(modelNames))
}
