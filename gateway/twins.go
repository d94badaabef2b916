package gateway

import (
	"context"
	"math"
	"sort"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// A node whose peer id two hosts announce from different addresses (one
// identity key copied to two machines) is refused: none of its instances
// is a candidate, nor listed in /v1/models, until only one host announces
// for a while. The gateway judges by itself (nodecore.TwinDetector over
// the announcements and strays it sees) and also follows the settlement
// peer's refusals in its health reports.

// settleRefusalTTL is how long a settlement refusal holds without a newer
// report (reports come every 5 s).
const settleRefusalTTL = 20 * time.Second

type refusal struct {
	status string
	reason string
	since  time.Time
	by     string // "gateway" or "settlement"
}

func nodeKey(id peer.ID, a *p2p.Announcement) string {
	if a.Node != "" {
		return a.Node
	}
	return id.String()
}

// Stray records an announcement the validator passed as a
// StrayAnnouncement: only the twin detector hears of it.
func (v *View) Stray(id peer.ID, a *p2p.Announcement) {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.now()
	v.twins.Observe(nodeKey(id, a), a.Addrs, a.Seq, now)
	v.reconcile(id, now)
}

// refusalOf is why id is refused at now, if it is.
func (v *View) refusalOf(id peer.ID, now time.Time) (refusal, bool) {
	if f, ok := v.twins.Flag(id.String(), now); ok {
		return refusal{status: p2p.RefusedDuplicateIdentity, reason: f.Reason, since: f.Since, by: "gateway"}, true
	}
	if r, ok := v.settleRefused[id]; ok && now.Sub(v.settleAt) <= settleRefusalTTL {
		return refusal{status: r.Status, reason: r.Reason, since: time.UnixMilli(r.SinceMs), by: "settlement"}, true
	}
	return refusal{}, false
}

// reconcile brings id's refusal up to date at now: a node refused anew
// leaves every table, one readmitted returns to them from its last
// announcement. It reports whether id is refused.
func (v *View) reconcile(id peer.ID, now time.Time) bool {
	r, no := v.refusalOf(id, now)
	old, was := v.refused[id]
	switch {
	case no && !was:
		v.refused[id] = r
		if e := v.nodes[id]; e != nil {
			for _, m := range e.ann.Models {
				v.removeInstance(id, m.Model)
			}
		}
		v.log.Warn("refusing a node: its peer id is announced by more than one host", "node", id.String(), "by", r.by, "reason", r.reason)
	case no:
		if old.reason != r.reason || old.by != r.by {
			v.refused[id] = r
		}
	case was:
		delete(v.refused, id)
		if e := v.nodes[id]; e != nil && v.fresh(e, now) {
			for _, m := range e.ann.Models {
				v.apply(id, m, &e.ann, now)
			}
		}
		v.log.Warn("readmitting a node: only one host announces its peer id now", "node", id.String(), "refused_for", now.Sub(old.since).Round(time.Second).String())
	}
	return no
}

// reconcileAll reconciles every node known or refused.
func (v *View) reconcileAll(now time.Time) {
	for id := range v.refused {
		v.reconcile(id, now)
	}
	for id := range v.settleRefused {
		v.reconcile(id, now)
	}
	for _, f := range v.twins.Flags(now) {
		if id, err := peer.Decode(f.Peer); err == nil {
			v.reconcile(id, now)
		}
	}
}

// setSettleRefused takes the refusals of the settlement peer's latest report.
func (v *View) setSettleRefused(rs []p2p.Refusal, now time.Time) {
	prev := v.settleRefused
	v.settleRefused, v.settleAt = make(map[peer.ID]p2p.Refusal, len(rs)), now
	for _, r := range rs {
		if id, err := peer.Decode(r.Node); err == nil && r.Reason != "" {
			v.settleRefused[id] = r
		}
	}
	for id := range v.settleRefused {
		v.reconcile(id, now)
	}
	for id := range prev {
		v.reconcile(id, now)
	}
}

// Refused reports whether id is refused now, and why.
func (v *View) Refused(id peer.ID) (status, reason string, ok bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, ok := v.refusalOf(id, v.now())
	return r.status, r.reason, ok
}

// DebugModels is Models plus the refused instances, with state "refused"
// and the reason, for /debug/instances.
func (v *View) DebugModels() []ModelInfo {
	models := v.Models()
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.now()
	byID := map[string]int{}
	for i, m := range models {
		byID[m.ID] = i
	}
	for id, r := range v.refused {
		e := v.nodes[id]
		if e == nil {
			continue
		}
		for _, m := range e.ann.Models {
			ii := InstanceInfo{
				Node: id.String(), Hardware: e.ann.Hardware, Synthetic: e.ann.Synthetic, Declared: m.Capacity,
				AgeMs: now.Sub(e.seen).Milliseconds(), RampUp: v.rampStart,
				Status: r.status, Reason: r.reason, RefusedBy: r.by, RefusedMs: now.Sub(r.since).Milliseconds(),
			}
			ii.ID, ii.State, ii.Breaker, ii.TokPerSec = id.String(), "refused", "closed", e.ann.TokPerSec
			if s, ok := v.health[instanceKey{id, m.Model}]; ok {
				ii.RampUp, ii.Health = s.Ramp, s.Score
			}
			ii.RampPct = math.Round(ii.RampUp*1000) / 10
			i, ok := byID[m.Model]
			if !ok {
				i = len(models)
				byID[m.Model] = i
				models = append(models, ModelInfo{ID: m.Model})
			}
			models[i].Instances = append(models[i].Instances, ii)
		}
	}
	for _, m := range models {
		sort.Slice(m.Instances, func(i, j int) bool { return m.Instances[i].Node < m.Instances[j].Node })
	}
	sort.Slice(models, func(i, j int) bool { return models[i].ID < models[j].ID })
	return models
}

// twinCheckEvery is how often connections to one peer id from hosts with
// different addresses are pinged (p2p.WatchTwins).
const twinCheckEvery = 3 * time.Second

// watchTwins feeds the twin detector with hosts found alive behind the
// connections of one peer id (two hosts sharing a key starve each other's
// gossip, so announcements alone may not show both) until ctx ends.
func (v *View) watchTwins(ctx context.Context, h *p2p.Host) {
	err := p2p.WatchTwins(ctx, h, twinCheckEvery, func(s p2p.HostSighting) {
		id, err := peer.Decode(s.Peer)
		if err != nil {
			return
		}
		v.mu.Lock()
		defer v.mu.Unlock()
		now := v.now()
		v.twins.ObserveConn(s.Peer, s.Addrs, s.Seq, now)
		v.reconcile(id, now)
	})
	if err != nil {
		v.mu.Lock()
		v.log.Warn("cannot watch connections for copied identities", "err", err)
		v.mu.Unlock()
	}
}
