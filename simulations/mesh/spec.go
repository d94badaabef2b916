package mesh

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tokenrouter/tokenrouter/nodecore"
	"github.com/tokenrouter/tokenrouter/simulations"
	"gopkg.in/yaml.v3"
)

// Duration is a scenario duration ("50ms", "30s", "2m").
type Duration = simulations.Duration

// Topic layouts for the load announcements.
const (
	TopicsSingle   = "single"    // every announcement on p2p.TopicLoad (what the live binary does)
	TopicsPerModel = "per-model" // one topic per model: p2p.TopicLoad + "/" + model
)

// Spec is a mesh scenario's parameters, as read from its file
// (simulations/scenarios/mesh-1000.yaml documents every field).
type Spec struct {
	Name     string `yaml:"name"`
	Engine   string `yaml:"engine"` // simulations.EngineMesh
	Question string `yaml:"question"`

	Hosts        int `yaml:"hosts"`          // every libp2p host: nodes + gateways + bootstrap peers
	Gateways     int `yaml:"gateways"`       // hosts that subscribe to the load topic(s) and are measured
	Bootstraps   int `yaml:"bootstraps"`     // hosts every other host dials first
	PeersPerHost int `yaml:"peers_per_host"` // random other hosts each host also dials

	// Connection manager of nodes and gateways (0 = libp2p's default, what
	// the live host runs: 160/192, a minute's grace); bootstrap peers keep
	// the default.
	ConnLow     int      `yaml:"conn_low"`
	ConnHigh    int      `yaml:"conn_high"`
	ConnGrace   Duration `yaml:"conn_grace"`   // a new connection is not trimmed this long (0 = a minute)
	ConnSilence Duration `yaml:"conn_silence"` // trims at most this often (0 = 10 s)

	Latency       Duration `yaml:"latency"`        // one-way delay of every packet
	BandwidthMbps int      `yaml:"bandwidth_mbps"` // each host's uplink and downlink

	JoinOver Duration `yaml:"join_over"` // hosts dial in, spread evenly over this
	Warmup   Duration `yaml:"warmup"`    // from the start until measuring begins
	Window   Duration `yaml:"window"`    // announcements and bytes are measured over this

	AnnounceEvery  Duration `yaml:"announce_every"`  // each node's interval; 0 = the live gossip budget's
	Topics         string   `yaml:"topics"`          // single | per-model
	Models         int      `yaml:"models"`          // distinct models, spread round-robin over nodes
	NodesSubscribe bool     `yaml:"nodes_subscribe"` // nodes also subscribe to (and relay) the load topic
	// FloodPublish: a publisher sends its own message to every subscribed
	// peer it is connected to, not only its mesh or fanout (GossipSub's
	// default, and the live host's). Unset = true.
	FloodPublish *bool `yaml:"flood_publish"`

	Kill     int      `yaml:"kill"`      // nodes killed (no goodbye) after the window
	KillOver Duration `yaml:"kill_over"` // the kills spread evenly over this
	Drain    Duration `yaml:"drain"`     // after the first kill, until the run ends

	Membership bool `yaml:"membership"` // run the membership layer (p2p.StartMembership) on every host

	Targets map[string]string `yaml:"targets"`
	Short   map[string]string `yaml:"short"`
}

// Nodes is how many hosts announce load.
func (s *Spec) Nodes() int { return s.Hosts - s.Gateways - s.Bootstraps }

// Every is each node's announcement interval: AnnounceEvery, or what the
// live gossip budget gives this many announcers (nodecore.GossipBudget).
func (s *Spec) Every() time.Duration {
	if s.AnnounceEvery > 0 {
		return s.AnnounceEvery.D()
	}
	return nodecore.DefaultGossipBudget().Interval(s.Nodes())
}

// Length is the run's virtual length: warmup, window, then the kill phase.
func (s *Spec) Length() time.Duration { return s.Warmup.D() + s.Window.D() + s.Drain.D() }

// ErrBadSpec reports a scenario that cannot run.
var ErrBadSpec = errors.New("mesh: bad scenario")

// Validate reports a scenario that cannot run.
func (s *Spec) Validate() error {
	bad := func(f string, a ...any) error { return fmt.Errorf("%w: "+f, append([]any{ErrBadSpec}, a...)...) }
	switch {
	case s.Engine != simulations.EngineMesh:
		return bad("engine %q, want %q", s.Engine, simulations.EngineMesh)
	case s.Hosts < 3 || s.Hosts > 20_000:
		return bad("hosts %d outside [3, 20000]", s.Hosts)
	case s.Gateways < 1 || s.Bootstraps < 1 || s.Nodes() < 1:
		return bad("want at least one gateway, one bootstrap peer and one node (hosts %d, gateways %d, bootstraps %d)", s.Hosts, s.Gateways, s.Bootstraps)
	case s.PeersPerHost < 0 || s.PeersPerHost >= s.Hosts:
		return bad("peers_per_host %d outside [0, hosts)", s.PeersPerHost)
	case s.ConnLow < 0 || s.ConnHigh < s.ConnLow || s.ConnGrace < 0 || s.ConnSilence < 0 || (s.ConnLow == 0) != (s.ConnHigh == 0):
		return bad("want 0 < conn_low <= conn_high (or both 0: libp2p's default) and conn_grace >= 0")
	case s.Latency < 0 || s.BandwidthMbps < 1:
		return bad("latency must be >= 0 and bandwidth_mbps >= 1")
	case s.Window <= 0 || s.Warmup < s.JoinOver || s.JoinOver < 0:
		return bad("want window > 0 and 0 <= join_over <= warmup")
	case s.AnnounceEvery < 0:
		return bad("announce_every must be >= 0 (0 = the gossip budget's)")
	case s.Topics != TopicsSingle && s.Topics != TopicsPerModel:
		return bad("topics %q: want %s or %s", s.Topics, TopicsSingle, TopicsPerModel)
	case s.Models < 1:
		return bad("models must be >= 1")
	case s.Kill < 0 || s.Kill > s.Nodes():
		return bad("kill %d outside [0, nodes=%d]", s.Kill, s.Nodes())
	case s.Kill > 0 && s.Drain <= s.KillOver:
		return bad("drain must be longer than kill_over")
	}
	for k, v := range s.Targets {
		if !strings.HasPrefix(k, "metrics.") || strings.TrimSpace(v) == "" {
			return bad("targets.%s: want metrics.NAME: \"<= x\"", k)
		}
	}
	return nil
}

// Load reads a mesh scenario (a built-in name such as "mesh-1000", or a
// file with `engine: mesh`), applies its short form when short and then
// the overrides sets ("hosts=300", "topics=per-model"), and validates it.
func Load(nameOrFile string, short bool, sets []string) (*Spec, error) {
	text, err := simulations.Document(nameOrFile, short, sets)
	if err != nil {
		return nil, err
	}
	var s Spec
	dec := yaml.NewDecoder(strings.NewReader(text))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("scenario %s: %w", nameOrFile, err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("scenario %s: %w", nameOrFile, err)
	}
	return &s, nil
}
