package gateway

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/internal/openai"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// What a gateway makes of a node's broken promises. A node that answers
// 429 while this gateway's view gave it room (capacity it announced but
// does not serve), or cannot serve a model it announced, has lied. Each
// such observation
//   - penalises the node in the host's AppScores, GossipSub's application
//     score (P5): past a few lies it leaves this host's mesh, and past ~40
//     outstanding it is graylisted; penalties fade with a 2-minute half-life;
//   - lowers its tie weight here (trust): equally idle instances share
//     ties in proportion to health × trust;
//   - for a 429, caps its capacity here at what it was serving when it
//     refused, the cap growing back one slot every CapRelax.
// An observation needs no one else's word: a gateway acts on what it saw.

// ObserveConfig tunes what a gateway makes of a node's broken promises.
type ObserveConfig struct {
	FullUnits  float64       // penalty for a 429 when all it announced looked free (scaled by the share that did)
	ModelUnits float64       // penalty for each call it cannot serve for a model it announced
	MinFree    float64       // share of its announced capacity (at least one slot) that must have looked free for a 429 to count
	CapRelax   time.Duration // a learned capacity cap grows one slot this often
	TrustSlope float64       // trust = 1 / (1 + TrustSlope × outstanding penalty)
	MaxCaps    int           // capacity caps remembered at most
}

// DefaultObserveConfig returns the defaults.
func DefaultObserveConfig() ObserveConfig {
	return ObserveConfig{
		FullUnits:  1,                // refusing at idle what it announced is one whole lie
		ModelUnits: 1,                // a model it cannot serve fails the caller's call: one lie each
		MinFree:    0.25,             // a view a second old misses less than a quarter of a node's calls at honest load
		CapRelax:   30 * time.Second, // a node that was only busy regains 8 slots within 4 minutes
		TrustSlope: 3,                // one clear lie (~0.75 units) cuts its share of ties to about a quarter
		MaxCaps:    10_000,           // one per lying instance seen: bounded against churn
	}
}

// Validate reports a configuration that cannot work.
func (c ObserveConfig) Validate() error {
	if c.FullUnits < 0 || c.ModelUnits < 0 || c.MinFree < 0 || c.MinFree > 1 || c.CapRelax <= 0 || c.TrustSlope < 0 || c.MaxCaps < 1 {
		return fmt.Errorf("gateway: bad observe config %+v", c)
	}
	return nil
}

// observations is a View's record of lies seen; its zero value uses the
// defaults and a registry of its own until the host's is set.
type observations struct {
	cfg    *ObserveConfig
	scores *p2p.AppScores // the host's: penalties also feed GossipSub (P5)
	caps   map[instanceKey]capEntry
}

// capEntry is a capacity cap learned from a 429: slots at at.
type capEntry struct {
	slots int
	at    time.Time
}

func (o *observations) config() *ObserveConfig {
	if o.cfg == nil {
		c := DefaultObserveConfig()
		o.cfg = &c
	}
	return o.cfg
}

func (o *observations) registry(now func() time.Time) *p2p.AppScores {
	if o.scores == nil {
		cfg := p2p.DefaultAppScoresConfig()
		cfg.Now = now
		o.scores, _ = p2p.NewAppScores(cfg) // the defaults are valid
	}
	return o.scores
}

// trust is id's tie-weight factor in (0,1]: 1 until it is seen lying.
func (v *View) trust(id peer.ID) float64 {
	if v.obs.scores == nil {
		return 1 // nothing seen yet
	}
	return 1 / (1 + v.obs.config().TrustSlope*v.obs.scores.Penalty(id))
}

// capped is l with its capacity capped at what the instance was seen to
// serve, if it refused calls its announcement had room for.
func (v *View) capped(id peer.ID, model string, l route.Load, now time.Time) route.Load {
	k := instanceKey{id, model}
	c, ok := v.obs.caps[k]
	if !ok {
		return l
	}
	slots := float64(c.slots) + math.Floor(float64(now.Sub(c.at))/float64(v.obs.config().CapRelax))
	if slots >= l.Declared {
		delete(v.obs.caps, k)
		return l
	}
	l.Capacity, l.Declared = min(l.Capacity, slots), min(l.Declared, slots)
	return l
}

// observeFull records a node's 429 on the call l holds: a lie when this
// gateway's view gave it room (its announced capacity less the calls
// others announced and this gateway's other calls on it).
func (v *View) observeFull(l *Lease) {
	if l == nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	id, e, h, ok := v.leased(l)
	if !ok {
		return
	}
	now := v.now()
	announced := announcedCapacity(&e.ann, l.model)
	info, _ := v.tables[l.model].Info(h, now)
	busy := info.InFlight + info.Local - 1 // this call is counted in Local
	free := announced - busy
	cfg := v.obs.config()
	if announced <= 0 || free < max(1, int(math.Ceil(cfg.MinFree*float64(announced)))) {
		return // full indeed, or a view too stale to tell
	}
	units := cfg.FullUnits * float64(free) / float64(announced)
	v.obs.registry(v.now).Penalize(id, units)
	v.learnCap(instanceKey{id, l.model}, max(busy, 1), now)
	v.retrust(id)
	v.log.Info("a node refused a call its announcement had room for", "node", l.id, "model", l.model,
		"announced", announced, "serving", busy, "penalty", units)
}

// observeRefusal records a node's error answer on the call l holds: a lie
// when it says it cannot serve a model it announced.
func (v *View) observeRefusal(l *Lease, status int, code string) {
	if l == nil || !cannotServe(status, code) {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	id, e, _, ok := v.leased(l)
	if !ok || !serves(&e.ann, l.model) {
		return
	}
	units := v.obs.config().ModelUnits
	v.obs.registry(v.now).Penalize(id, units)
	v.retrust(id)
	v.log.Info("a node cannot serve a model it announced", "node", l.id, "model", l.model, "status", status, "code", code)
}

// cannotServe reports whether a node's error says it cannot serve the
// model at all: it does not have it, or its engine refuses it (a model the
// engine lacks, credentials refused). A crash or a timeout is a failure,
// not a lie.
func cannotServe(status int, code string) bool {
	return status == http.StatusNotFound && code == "model_not_found" || code == "upstream_refused"
}

// leased returns the node of l's instance, its entry and handle, if the
// instance l was drawn from is still the one in its table.
func (v *View) leased(l *Lease) (peer.ID, *nodeEntry, route.Handle, bool) {
	t := v.tables[l.model]
	if t == nil {
		return "", nil, 0, false
	}
	h, ok := t.Lookup(l.id)
	if !ok || h != l.h {
		return "", nil, 0, false
	}
	id, err := peer.Decode(l.id)
	if err != nil {
		return "", nil, 0, false
	}
	e := v.nodes[id]
	return id, e, h, e != nil
}

func announcedCapacity(a *p2p.Announcement, model string) int {
	for _, m := range a.Models {
		if m.Model == model {
			return m.Capacity
		}
	}
	return 0
}

func (v *View) learnCap(k instanceKey, slots int, now time.Time) {
	if v.obs.caps == nil {
		v.obs.caps = map[instanceKey]capEntry{}
	}
	if len(v.obs.caps) >= v.obs.config().MaxCaps {
		clear(v.obs.caps) // rare: thousands of liars; they are re-learned at their next refusal
	}
	v.obs.caps[k] = capEntry{slots: slots, at: now}
}

// retrust applies id's trust to the tie weight of its instances now (its
// next announcement would otherwise).
func (v *View) retrust(id peer.ID) {
	e := v.nodes[id]
	if e == nil {
		return
	}
	for _, m := range e.ann.Models {
		if t := v.tables[m.Model]; t != nil {
			if h, ok := t.Lookup(id.String()); ok {
				t.SetHealth(h, v.tieWeight(id, m.Model))
			}
		}
	}
}

// tieWeight is an instance's tie weight: the settlement peer's health
// score (1 until it scores it) times this gateway's trust in the node.
func (v *View) tieWeight(id peer.ID, model string) float64 {
	health := 1.0
	if s, ok := v.health[instanceKey{id, model}]; ok {
		health = s.Score
	}
	return health * v.trust(id)
}

// readNodeError reads a node's error body frame: its OpenAI error code
// and message.
func readNodeError(br *bufio.Reader) (code, msg string) {
	typ, payload, err := p2p.ReadFrame(br, nil, 1<<20)
	if err != nil || typ != p2p.FrameData {
		return "", "node failed"
	}
	var e openai.ErrorBody
	if json.Unmarshal(payload, &e) != nil || e.Error.Message == "" {
		return "", "node failed"
	}
	if e.Error.Code != nil {
		code = *e.Error.Code
	}
	return code, e.Error.Message
}
