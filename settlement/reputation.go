package settlement

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tokenrouter/tokenrouter/nodecore"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// ReputationConfig configures the health window the settlement peer keeps.
type ReputationConfig struct {
	Health       nodecore.HealthConfig
	Ramp         nodecore.RampConfig
	OnlineGap    time.Duration // a silence longer than this between announcements counts as offline
	LiveFor      time.Duration // an instance announced within this is live: scored and probed
	PublishEvery time.Duration // how often scores are published on gossip
	ProbeEvery   time.Duration // how often each live instance is probed
	ProbeTimeout time.Duration // how long a probe may take
	SnapshotFile string        // where the window is kept across restarts ("" = memory only)
	SaveEvery    time.Duration // how often the snapshot is written
	// Twins tunes the detection of one peer id announced by two hosts (zero
	// fields: nodecore.DefaultTwinConfig).
	Twins nodecore.TwinConfig
}

// DefaultReputationConfig returns the defaults.
func DefaultReputationConfig() ReputationConfig {
	return ReputationConfig{
		Health:       nodecore.DefaultHealthConfig(),
		Ramp:         nodecore.DefaultRampConfig(),
		OnlineGap:    10 * time.Second, // nodes announce every 3 s at most apart; 10 s is the gossip freshness limit
		LiveFor:      30 * time.Second, // a few missed heartbeats
		PublishEvery: 5 * time.Second,  // gateways see a new instance's ramp and score within seconds
		ProbeEvery:   time.Minute,      // cheap: one completion token a minute per instance
		ProbeTimeout: 20 * time.Second, // a loaded engine may queue a probe
		SaveEvery:    time.Minute,      // losing a minute of health history on a crash is harmless
	}
}

// Validate reports a configuration that cannot work.
func (c ReputationConfig) Validate() error {
	if err := c.Health.Validate(); err != nil {
		return err
	}
	if err := c.Ramp.Validate(); err != nil {
		return err
	}
	if c.OnlineGap <= 0 || c.LiveFor <= 0 || c.PublishEvery <= 0 || c.ProbeEvery <= 0 || c.ProbeTimeout <= 0 || c.SaveEvery <= 0 {
		return fmt.Errorf("settlement: reputation intervals must be positive")
	}
	return nil
}

// Reputation is the settlement peer's 14-day health window of every
// instance: billed calls, failures gateways report, its own probes and time
// online. Methods take the time of the event; it reads no clock itself.
type Reputation struct {
	cfg ReputationConfig

	mu        sync.Mutex
	instances map[string]*repInstance   // key: node + "/" + model
	nodes     map[string][]*repInstance // each node's instances
	models    map[string]int            // instances per model, ever seen
	twins     *nodecore.TwinDetector    // peer ids two hosts announce: refused
}

type repInstance struct {
	Node       string                 `json:"node"`
	Model      string                 `json:"model"`
	Window     *nodecore.HealthWindow `json:"window"`
	LastSeen   time.Time              `json:"last_seen"`
	SwitchedAt time.Time              `json:"switched_at,omitzero"` // the node took this model up after serving others
	Capacity   int                    `json:"-"`                    // per its last announcement
	InFlight   int                    `json:"-"`
	Every      time.Duration          `json:"-"` // its announced heartbeat (p2p.Announcement.Every)
	TokPerSec  float64                `json:"-"` // the node's measured rate, per its last announcement
	// For its operator's dashboard, since the instance was first seen:
	// what its calls earned (the ledger holds the exact transfers), its
	// billed calls, and the calls gateways routed elsewhere while it was
	// parked, below the floor or full (keyed by p2p.PassedParked, ...).
	EarnedUcr int64            `json:"earned_ucr,omitempty"`
	Calls     int64            `json:"calls,omitempty"`
	Lost      map[string]int64 `json:"lost,omitempty"`
}

// onlineGap is the longest silence of in that still counts as online: a
// node under a wide gossip budget announces seldom, and is not offline
// between its heartbeats.
func (r *Reputation) onlineGap(in *repInstance) time.Duration {
	return max(r.cfg.OnlineGap, 2*in.Every+time.Second)
}

// live reports whether in announced recently enough to be live at now.
func (r *Reputation) live(in *repInstance, now time.Time) bool {
	return now.Sub(in.LastSeen) <= max(r.cfg.LiveFor, 3*in.Every)
}

// NewReputation returns an empty reputation.
func NewReputation(cfg ReputationConfig) *Reputation {
	return &Reputation{cfg: cfg, instances: map[string]*repInstance{}, nodes: map[string][]*repInstance{}, models: map[string]int{},
		twins: nodecore.NewTwinDetector(cfg.Twins)}
}

func (r *Reputation) instance(node, model string, now time.Time) (*repInstance, bool) {
	k := node + "/" + model
	in := r.instances[k]
	if in == nil {
		in = &repInstance{Node: node, Model: model, Window: nodecore.NewHealthWindow(r.cfg.Health, now)}
		r.instances[k] = in
		r.nodes[node] = append(r.nodes[node], in)
		r.models[model]++
		return in, true
	}
	return in, false
}

// Announced counts time online for each model a node announced at now. It
// reports whether an instance was seen for the first time.
func (r *Reputation) Announced(a *p2p.Announcement, now time.Time) (fresh bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Judge switches against what the node served before this announcement.
	switched := make([]bool, len(a.Models))
	for i, m := range a.Models {
		switched[i] = r.takesUp(a.Node, m.Model, now)
	}
	for i, m := range a.Models {
		in, isNew := r.instance(a.Node, m.Model, now)
		fresh = fresh || isNew
		if switched[i] {
			in.SwitchedAt = now // a model switch: its payouts are cut for a while
		}
		if gap := now.Sub(in.LastSeen); !isNew && gap > 0 && gap <= r.onlineGap(in) {
			in.Window.AddOnline(r.cfg.Health, now, gap)
		}
		in.LastSeen = now
		in.Capacity, in.InFlight, in.Every, in.TokPerSec = m.Capacity, m.InFlight, a.Every(), a.TokPerSec
	}
	return fresh
}

// takesUp reports whether announcing model now is a model switch: the node
// is known, is not serving this model at the moment, and served another
// model more recently than this one (a new model, one taken up again, or
// one it returns with after serving others). A node's first announcement,
// and one coming back with the model it last served, are not switches.
func (r *Reputation) takesUp(node, model string, now time.Time) bool {
	var this, other time.Time
	servingThis := false
	for _, in := range r.nodes[node] {
		if in.Model == model {
			this, servingThis = in.LastSeen, r.live(in, now)
		} else if in.LastSeen.After(other) {
			other = in.LastSeen
		}
	}
	return len(r.nodes[node]) > 0 && !servingThis && (this.IsZero() || other.After(this))
}

// Standing is what payouts need to know of an instance at now.
type Standing struct {
	Known      bool
	Score      float64
	Age        time.Duration // since first seen
	SwitchedAt time.Time     // zero: never switched models
}

// Standing returns an instance's standing at now.
func (r *Reputation) Standing(node, model string, now time.Time) Standing {
	r.mu.Lock()
	defer r.mu.Unlock()
	in := r.instances[node+"/"+model]
	if in == nil {
		return Standing{}
	}
	return Standing{
		Known: true, Score: in.Window.Score(r.cfg.Health, now),
		Age: now.Sub(in.Window.FirstSeen), SwitchedAt: in.SwitchedAt,
	}
}

// knowsModel reports whether any instance ever announced model.
func (r *Reputation) knowsModel(model string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.models[model] > 0
}

// ModelSupply is the live capacity and load of one model.
type ModelSupply struct {
	Model     string
	Capacity  int
	InFlight  int
	Instances int
}

// Supply sums the last announcements of live instances per model.
func (r *Reputation) Supply(now time.Time) map[string]ModelSupply {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]ModelSupply{}
	for _, in := range r.instances {
		if !r.live(in, now) {
			continue
		}
		ms := out[in.Model]
		ms.Model = in.Model
		ms.Capacity += in.Capacity
		ms.InFlight += in.InFlight
		ms.Instances++
		out[in.Model] = ms
	}
	return out
}

// Record counts n events for an instance at now. Only instances that have
// announced themselves are tracked: events about unknown ones are dropped,
// so nobody can create entries (or start an instance's ramp-up clock) but
// the instance itself.
func (r *Reputation) Record(node, model string, e nodecore.Event, n uint32, now time.Time) {
	if n == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if in := r.instances[node+"/"+model]; in != nil {
		in.Window.Record(r.cfg.Health, now, e, n)
	}
}

// Paid counts a billed call of an instance and what its provider earned on it.
func (r *Reputation) Paid(node, model string, earned int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if in := r.instances[node+"/"+model]; in != nil {
		in.Calls++
		in.EarnedUcr += earned
	}
}

// PassedOver counts n calls a gateway routed elsewhere while the instance
// was parked, below the floor or full (why: p2p.PassedParked, ...).
func (r *Reputation) PassedOver(node, model, why string, n uint32) {
	if n == 0 || (why != p2p.PassedParked && why != p2p.PassedFloor && why != p2p.PassedFull) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if in := r.instances[node+"/"+model]; in != nil {
		if in.Lost == nil {
			in.Lost = map[string]int64{}
		}
		in.Lost[why] += int64(n)
	}
}

// InstanceView is one of a node's instances as its operator sees it.
type InstanceView struct {
	Model      string           `json:"model"`
	Live       bool             `json:"live"`
	Capacity   int              `json:"capacity"`
	InFlight   int              `json:"in_flight"`
	TokPerSec  float64          `json:"tok_s"`
	Score      float64          `json:"health_score"`
	Ramp       float64          `json:"ramp"` // 0..1 of full capacity
	SwitchedAt time.Time        `json:"switched_at,omitzero"`
	LastSeen   time.Time        `json:"last_seen"`
	EarnedUcr  int64            `json:"earned_ucr"`
	Calls      int64            `json:"calls"`
	Failures   uint64           `json:"failures"` // in the health window: calls gateways saw fail, failed probes
	Lost       map[string]int64 `json:"lost_calls"`
}

// Node lists a node's instances, live or not, by model.
func (r *Reputation) Node(node string, now time.Time) []InstanceView {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []InstanceView
	for _, in := range r.nodes[node] {
		counts, _ := in.Window.Totals(r.cfg.Health, now)
		v := InstanceView{
			Model: in.Model, Live: r.live(in, now), Capacity: in.Capacity, InFlight: in.InFlight, TokPerSec: in.TokPerSec,
			Score: in.Window.Score(r.cfg.Health, now), Ramp: r.cfg.Ramp.Ramp(in.Window.FirstSeen, now),
			SwitchedAt: in.SwitchedAt, LastSeen: in.LastSeen, EarnedUcr: in.EarnedUcr, Calls: in.Calls,
			Failures: counts[nodecore.EventFailure] + counts[nodecore.EventProbeFail], Lost: maps.Clone(in.Lost),
		}
		if v.Lost == nil {
			v.Lost = map[string]int64{}
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b InstanceView) int { return strings.Compare(a.Model, b.Model) })
	return out
}

// Scores returns every live instance's score and ramp at now, sorted.
func (r *Reputation) Scores(now time.Time) []p2p.InstanceScore {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]p2p.InstanceScore, 0, len(r.instances))
	for _, in := range r.instances {
		if !r.live(in, now) {
			continue
		}
		out = append(out, p2p.InstanceScore{
			Node: in.Node, Model: in.Model,
			Score:       in.Window.Score(r.cfg.Health, now),
			Ramp:        r.cfg.Ramp.Ramp(in.Window.FirstSeen, now),
			FirstSeenMs: in.Window.FirstSeen.UnixMilli(),
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Node != out[j].Node {
			return out[i].Node < out[j].Node
		}
		return out[i].Model < out[j].Model
	})
	return out
}

// Save writes the window to path atomically.
func (r *Reputation) Save(path string) error {
	r.mu.Lock()
	data, err := json.Marshal(r.instances)
	r.mu.Unlock()
	if err != nil {
		return err
	}
	return p2p.WriteFileAtomic(path, data, 0o600)
}

// Load restores a window Save wrote; a missing file is an empty window.
func (r *Reputation) Load(path string) error {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	m := map[string]*repInstance{}
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("settlement: health snapshot %s: %w", path, err)
	}
	if m == nil {
		m = map[string]*repInstance{}
	}
	for k, in := range m {
		if in == nil || in.Window == nil || in.Node == "" || in.Model == "" {
			delete(m, k) // a damaged entry: the instance starts afresh
		}
	}
	nodes, models := map[string][]*repInstance{}, map[string]int{}
	for _, in := range m {
		nodes[in.Node] = append(nodes[in.Node], in)
		models[in.Model]++
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.instances, r.nodes, r.models = m, nodes, models
	return nil
}

// ObserveAddrs feeds the twin detector with an announcement (in order or a
// stray) received at now, or with conn a p2p.HostSighting (a host found
// alive behind a connection: its listen addresses and peer record
// sequence). It reports whether the node's refusal changed, and the
// refusal when it is refused.
func (r *Reputation) ObserveAddrs(node string, conn bool, addrs []string, seq uint64, now time.Time) (changed bool, ref p2p.Refusal, refused bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if conn {
		refused, changed = r.twins.ObserveConn(node, addrs, seq, now)
	} else {
		refused, changed = r.twins.Observe(node, addrs, seq, now)
	}
	if refused {
		ref, _ = r.refusal(node, now)
	}
	return changed, ref, refused
}

func (r *Reputation) refusal(node string, now time.Time) (p2p.Refusal, bool) {
	f, ok := r.twins.Flag(node, now)
	if !ok {
		return p2p.Refusal{}, false
	}
	return p2p.Refusal{Node: node, Status: p2p.RefusedDuplicateIdentity, Reason: f.Reason, SinceMs: f.Since.UnixMilli()}, true
}

// Refusal returns node's refusal at now, if it is refused.
func (r *Reputation) Refusal(node string, now time.Time) (p2p.Refusal, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refusal(node, now)
}

// Refusals returns every node refused at now, sorted by node.
func (r *Reputation) Refusals(now time.Time) []p2p.Refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []p2p.Refusal
	for _, f := range r.twins.Flags(now) {
		out = append(out, p2p.Refusal{Node: f.Peer, Status: p2p.RefusedDuplicateIdentity, Reason: f.Reason, SinceMs: f.Since.UnixMilli()})
	}
	return out
}

// SweepRefusals clears the refusals due at now and returns the nodes cleared.
func (r *Reputation) SweepRefusals(now time.Time) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.twins.Sweep(now)
}
