package gateway

import (
	"context"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/multiformats/go-multiaddr"
	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// View is the gateway's picture of the network: the latest announcement of
// every node, plus this gateway's own in-flight calls per instance.
type View struct {
	now    func() time.Time
	maxAge time.Duration

	mu    sync.Mutex
	nodes map[peer.ID]*nodeEntry
	local map[instanceKey]int
	rnd   *rand.Rand
	cands []route.Candidate // scratch, reused under mu
	keys  []instanceKey
}

type instanceKey struct {
	node  peer.ID
	model string
}

type nodeEntry struct {
	ann  p2p.Announcement
	seen time.Time
}

// NewView returns an empty view; announcements older than maxAge are not candidates.
func NewView(now func() time.Time, maxAge time.Duration, seed uint64) *View {
	return &View{
		now:    now,
		maxAge: maxAge,
		nodes:  map[peer.ID]*nodeEntry{},
		local:  map[instanceKey]int{},
		rnd:    rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
	}
}

// Update records an announcement.
func (v *View) Update(id peer.ID, a *p2p.Announcement) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.nodes[id] = &nodeEntry{ann: *a, seen: v.now()}
}

// Forget drops a node (it failed to answer, or left).
func (v *View) Forget(id peer.ID) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.nodes, id)
}

func (v *View) live(e *nodeEntry, now time.Time) bool { return now.Sub(e.seen) <= v.maxAge }

// HasModel reports whether any live instance serves model.
func (v *View) HasModel(model string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.now()
	for _, e := range v.nodes {
		if !v.live(e, now) {
			continue
		}
		for _, m := range e.ann.Models {
			if m.Model == model {
				return true
			}
		}
	}
	return false
}

// Acquire picks an instance of model (skipping nodes in exclude) and counts a
// call in flight to it; release must be called when the call ends.
func (v *View) Acquire(model string, exclude map[peer.ID]bool) (node peer.ID, release func(), ok bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.now()
	v.cands, v.keys = v.cands[:0], v.keys[:0]
	for id, e := range v.nodes {
		if !v.live(e, now) {
			continue
		}
		for _, m := range e.ann.Models {
			if m.Model != model {
				continue
			}
			k := instanceKey{id, model}
			v.keys = append(v.keys, k)
			v.cands = append(v.cands, route.Candidate{
				ID: id.String(), Capacity: m.Capacity, InFlight: m.InFlight,
				Local: v.local[k], Excluded: exclude[id],
			})
		}
	}
	i := route.Pick(v.cands, route.DefaultTieBand, v.rnd)
	if i < 0 {
		return "", nil, false
	}
	k := v.keys[i]
	v.local[k]++
	var once sync.Once
	return k.node, func() {
		once.Do(func() {
			v.mu.Lock()
			defer v.mu.Unlock()
			if v.local[k]--; v.local[k] <= 0 {
				delete(v.local, k)
			}
		})
	}, true
}

// ModelInfo summarises one model for /v1/models.
type ModelInfo struct {
	ID        string
	Instances []InstanceInfo
}

// InstanceInfo is one live instance as the gateway sees it.
type InstanceInfo struct {
	Node      string  `json:"node"`
	Capacity  int     `json:"capacity"`
	InFlight  int     `json:"in_flight"`
	Local     int     `json:"gateway_in_flight"`
	Spare     float64 `json:"spare_capacity"`
	TokPerSec float64 `json:"tok_s"`
	Hardware  string  `json:"hardware,omitempty"`
	Synthetic bool    `json:"synthetic,omitempty"`
	AgeMs     int64   `json:"announced_ms_ago"`
}

// Models lists every model with at least one live instance, sorted by id.
func (v *View) Models() []ModelInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.now()
	byModel := map[string]*ModelInfo{}
	for id, e := range v.nodes {
		if !v.live(e, now) {
			continue
		}
		for _, m := range e.ann.Models {
			mi := byModel[m.Model]
			if mi == nil {
				mi = &ModelInfo{ID: m.Model}
				byModel[m.Model] = mi
			}
			c := route.Candidate{Capacity: m.Capacity, InFlight: m.InFlight, Local: v.local[instanceKey{id, m.Model}]}
			mi.Instances = append(mi.Instances, InstanceInfo{
				Node: id.String(), Capacity: m.Capacity, InFlight: m.InFlight, Local: c.Local,
				Spare: c.Spare(), TokPerSec: e.ann.TokPerSec, Hardware: e.ann.Hardware,
				Synthetic: e.ann.Synthetic, AgeMs: now.Sub(e.seen).Milliseconds(),
			})
		}
	}
	out := make([]ModelInfo, 0, len(byModel))
	for _, mi := range byModel {
		sort.Slice(mi.Instances, func(i, j int) bool { return mi.Instances[i].Node < mi.Instances[j].Node })
		out = append(out, *mi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// follow feeds announcements from sub into the view until ctx ends, and
// teaches the peerstore where each node listens.
func (v *View) follow(ctx context.Context, h *p2p.Host, sub *pubsub.Subscription) {
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			return
		}
		a, ok := msg.ValidatorData.(*p2p.Announcement)
		if !ok {
			continue
		}
		from := msg.GetFrom()
		for _, s := range a.Addrs {
			if m, err := multiaddr.NewMultiaddr(s); err == nil {
				if tr, _ := peer.SplitAddr(m); tr != nil {
					h.Peerstore().AddAddr(from, tr, peerstore.TempAddrTTL)
				}
			}
		}
		v.Update(from, a)
	}
}
