package simulations

import (
	"embed"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

//go:embed scenarios/*.yaml
var builtin embed.FS

// Scenario is one simulation's parameters, as read from a scenario file.
// Every field is documented in the built-in files (scenarios/*.yaml).
type Scenario struct {
	Name        string            `yaml:"name"`
	Question    string            `yaml:"question"`
	Duration    Duration          `yaml:"duration"`
	SampleEvery Duration          `yaml:"sample_every"`
	Models      []ModelSpec       `yaml:"models"`
	Consumers   ConsumerSpec      `yaml:"consumers"`
	Gateways    GatewaySpec       `yaml:"gateways"`
	Nodes       []NodeGroup       `yaml:"nodes"`
	Reputation  ReputationSpec    `yaml:"reputation"`
	Economy     EconomySpec       `yaml:"economy"`
	Route       RouteSpec         `yaml:"route"`
	Ratios      map[string]Ratio  `yaml:"ratios"`
	Targets     map[string]string `yaml:"targets"`
	Short       map[string]string `yaml:"short"`
}

// ModelSpec is one model consumers ask for.
type ModelSpec struct {
	Name        string  `yaml:"name"`
	Demand      float64 `yaml:"demand"`       // share of arrivals (weights are normalised)
	Swing       float64 `yaml:"swing"`        // amplitude in [0,1] of a daily demand cycle
	SwingPhase  float64 `yaml:"swing_phase"`  // its phase, in hours
	PriceInput  int64   `yaml:"price_input"`  // µcr per 1M prompt tokens
	PriceOutput int64   `yaml:"price_output"` // µcr per 1M output tokens
}

// ConsumerSpec is the arrival process and the calls consumers make.
type ConsumerSpec struct {
	Rate          float64  `yaml:"rate"` // calls per simulated second, all models (Poisson)
	PromptTokens  IntRange `yaml:"prompt_tokens"`
	OutputTokens  IntRange `yaml:"output_tokens"`
	BadInputShare float64  `yaml:"bad_input_share"` // calls the consumer gets wrong: a 400, neutral for the node
}

// IntRange is a uniform draw in [Min, Max].
type IntRange struct {
	Min int `yaml:"min"`
	Max int `yaml:"max"`
}

// GatewaySpec is the gateways: how many, and how stale their view is.
type GatewaySpec struct {
	Count         int      `yaml:"count"`
	GossipDelay   Duration `yaml:"gossip_delay"`   // least delay of an announcement to a gateway
	GossipJitter  Duration `yaml:"gossip_jitter"`  // each gateway's extra delay, drawn once in [0, jitter]
	AnnounceEvery Duration `yaml:"announce_every"` // a node announces on change, at most this often
	Retries       int      `yaml:"retries"`        // other instances tried after a failure (SPEC: 2)
	DeadAfter     Duration `yaml:"dead_after"`     // a dead node leaves the gateways' tables after this
	Baselines     []string `yaml:"baselines"`      // also run with these policies: least-loaded, p2c
}

// NodeGroup is a group of nodes alike.
type NodeGroup struct {
	Name        string   `yaml:"name"`
	Count       int      `yaml:"count"`
	Model       string   `yaml:"model"`    // "" = models[i % len(models)]
	Capacity    int      `yaml:"capacity"` // concurrent calls it really serves
	Declared    int      `yaml:"declared"` // concurrent calls it announces (0 = Capacity)
	TokPerSec   float64  `yaml:"tok_s"`    // its real generation rate
	ClaimedTokS float64  `yaml:"claimed_tok_s"`
	TTFT        Duration `yaml:"ttft"`          // time to first token
	Age         Duration `yaml:"age"`           // how long before the start it was first seen
	JoinAt      Duration `yaml:"join_at"`       // when it comes online
	FailRate    float64  `yaml:"fail_rate"`     // share of its calls that fail (5xx)
	Episodes    Episodes `yaml:"episodes"`      // failure episodes: fails every call while one lasts
	Churn       Churn    `yaml:"churn"`         // going offline and coming back
	Identity    Identity `yaml:"identity"`      // taking a fresh identity (Sybil)
	Follow      Follow   `yaml:"follow"`        // switching models after bounties
	CostPerHour int64    `yaml:"cost_per_hour"` // µcr per hour online (power, hardware)
	Newcomer    bool     `yaml:"-"`
}

// Episodes are failure episodes: every Every on average, lasting For.
type Episodes struct {
	Every Duration `yaml:"every"`
	For   Duration `yaml:"for"`
}

// Churn is going offline without a goodbye and coming back.
type Churn struct {
	Every Duration `yaml:"every"` // mean time online (0 = never leaves)
	Down  Duration `yaml:"down"`  // mean time offline
}

// Identity is when a node drops its identity for a fresh one.
type Identity struct {
	Every      Duration `yaml:"every"`       // at least this often (0 = never)
	BelowScore float64  `yaml:"below_score"` // or as soon as its health score falls below this
}

// Follow is switching the served model toward bounties.
type Follow struct {
	Every   Duration `yaml:"every"`    // how often the operator looks (0 = never switches)
	Prob    float64  `yaml:"prob"`     // chance of acting on a better bounty when it looks
	MinStay Duration `yaml:"min_stay"` // never switch again sooner than this
}

// ReputationSpec is the settlement peer's health window and probes.
type ReputationSpec struct {
	Enabled      bool     `yaml:"enabled"`
	Window       Duration `yaml:"window"`
	Bucket       Duration `yaml:"bucket"`
	PublishEvery Duration `yaml:"publish_every"`
	ProbeEvery   Duration `yaml:"probe_every"` // 0 = no probes
	RampStart    float64  `yaml:"ramp_start"`
	RampPeriod   Duration `yaml:"ramp_period"`
}

// EconomySpec is the split, anti-flapping and bounties.
type EconomySpec struct {
	ProviderBps   int64    `yaml:"provider_bps"`
	PoolBps       int64    `yaml:"pool_bps"`
	FlapCut       float64  `yaml:"flap_cut"`
	FlapDecay     Duration `yaml:"flap_decay"`
	Bounties      bool     `yaml:"bounties"`
	BountiesFrom  Duration `yaml:"bounties_from"` // bounties start here; "before"/"after" metrics split here
	BountyEvery   Duration `yaml:"bounty_every"`
	BountyTarget  float64  `yaml:"bounty_target"`
	EstablishedAt Duration `yaml:"established_age"`
	TrustedAt     Duration `yaml:"trusted_age"`
}

// RouteSpec overrides the routing policy (zero = gateway/route's default).
type RouteSpec struct {
	TieBand        float64  `yaml:"tie_band"`
	FloorTokPerSec float64  `yaml:"floor_tok_s"`
	FailuresToPark int      `yaml:"failures_to_park"`
	FailureWindow  Duration `yaml:"failure_window"`
	ParkFor        Duration `yaml:"park_for"`
}

// Ratio is a metric that divides one group's figure by another's.
type Ratio struct {
	Num string `yaml:"num"` // group name
	Den string `yaml:"den"` // group name
	Of  string `yaml:"of"`  // calls_per_node, profit_per_node, earned_per_node
}

// Duration is a time.Duration written as "90s", "15m", "36h" or "14d".
type Duration time.Duration

// D is the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalYAML reads "14d", any time.ParseDuration string, or seconds.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes it back as a string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// ParseDuration reads "14d", "1d12h", any time.ParseDuration string, or a
// number of seconds.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return time.Duration(f * float64(time.Second)), nil
	}
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.ParseFloat(s[:i], 64)
		if err != nil {
			return 0, fmt.Errorf("duration %q: %w", s, err)
		}
		days, s = time.Duration(n*24*float64(time.Hour)), s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("duration %q: want e.g. 90s, 15m, 36h or 14d", s)
	}
	return days + v, nil
}

// EngineMesh is the `engine:` of a scenario that package simulations/mesh
// runs on real libp2p hosts (mesh-1000) instead of this package's
// discrete-event Run.
const EngineMesh = "mesh"

// Names lists the built-in discrete-event scenarios (NamesOf(EngineMesh)
// lists the others).
func Names() []string { return NamesOf("") }

// NamesOf lists the built-in scenarios whose file says `engine: engine`
// ("" = this package's discrete-event engine).
func NamesOf(engine string) []string {
	ents, _ := builtin.ReadDir("scenarios")
	var out []string
	for _, e := range ents {
		name := strings.TrimSuffix(e.Name(), ".yaml")
		if got, err := EngineOf(name); err == nil && got == engine {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// EngineOf is the `engine:` a scenario file names ("" = discrete-event).
func EngineOf(nameOrFile string) (string, error) {
	data, err := source(nameOrFile)
	if err != nil {
		return "", err
	}
	var e struct {
		Engine string `yaml:"engine"`
	}
	if err := yaml.Unmarshal(data, &e); err != nil {
		return "", fmt.Errorf("scenario %s: %w", nameOrFile, err)
	}
	return e.Engine, nil
}

func source(nameOrFile string) ([]byte, error) {
	if strings.ContainsAny(nameOrFile, "/.") {
		return os.ReadFile(nameOrFile)
	}
	data, err := builtin.ReadFile(filepath.Join("scenarios", nameOrFile+".yaml"))
	if err != nil {
		all := append(Names(), NamesOf(EngineMesh)...)
		return nil, fmt.Errorf("%w %q (built in: %s)", ErrUnknownScenario, nameOrFile, strings.Join(all, ", "))
	}
	return data, nil
}

// Load reads a built-in scenario by name or a scenario file by path, with
// the overrides sets ("path=value") applied; short applies the file's own
// short form first (what CI runs).
func Load(nameOrFile string, short bool, sets []string) (*Scenario, error) {
	text, err := Document(nameOrFile, short, sets)
	if err != nil {
		return nil, err
	}
	if engine, err := EngineOf(nameOrFile); err != nil || engine != "" {
		return nil, fmt.Errorf("%w: scenario %s runs on engine %q", ErrOtherEngine, nameOrFile, engine)
	}
	var sc Scenario
	dec := yaml.NewDecoder(strings.NewReader(text))
	dec.KnownFields(true)
	if err := dec.Decode(&sc); err != nil {
		return nil, fmt.Errorf("scenario %s: %w", nameOrFile, err)
	}
	sc.defaults()
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("scenario %s: %w", nameOrFile, err)
	}
	return &sc, nil
}

// Document reads a built-in scenario by name or a scenario file by path
// and returns its YAML with the file's short form (when short) and then
// the overrides sets ("path=value") applied, for Load or another engine's
// loader to decode.
func Document(nameOrFile string, short bool, sets []string) (string, error) {
	data, err := source(nameOrFile)
	if err != nil {
		return "", err
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return "", fmt.Errorf("scenario %s: %w", nameOrFile, err)
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) != 1 || root.Content[0].Kind != yaml.MappingNode {
		return "", fmt.Errorf("scenario %s: want a mapping at the top", nameOrFile)
	}
	doc := root.Content[0]
	if short {
		var s struct {
			Short yaml.Node `yaml:"short"`
		}
		if err := root.Decode(&s); err != nil {
			return "", fmt.Errorf("scenario %s: short: %w", nameOrFile, err)
		}
		for i := 0; i+1 < len(s.Short.Content); i += 2 {
			if err := set(doc, s.Short.Content[i].Value, s.Short.Content[i+1].Value); err != nil {
				return "", fmt.Errorf("scenario %s: short: %w", nameOrFile, err)
			}
		}
	}
	for _, kv := range sets {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return "", fmt.Errorf("%w: --set %q: want path=value", ErrBadParam, kv)
		}
		if err := set(doc, strings.TrimSpace(k), strings.TrimSpace(v)); err != nil {
			return "", err
		}
	}
	return mustEncode(&root), nil
}

func mustEncode(n *yaml.Node) string {
	b, err := yaml.Marshal(n)
	if err != nil {
		panic(err) // a tree yaml.v3 parsed always encodes
	}
	return string(b)
}

// Errors.
var (
	ErrUnknownScenario = errors.New("sim: no scenario")
	ErrBadParam        = errors.New("sim: bad parameter")
	ErrOtherEngine     = errors.New("sim: not a discrete-event scenario")
)

// set writes value at path ("consumers.rate", "nodes.0.count" or
// "nodes.spoofer.count": a list entry by index or by its name).
func set(doc *yaml.Node, path, value string) error {
	parts := strings.Split(path, ".")
	n := doc
	for i, p := range parts {
		last := i == len(parts)-1
		switch n.Kind {
		case yaml.MappingNode:
			var child *yaml.Node
			for j := 0; j+1 < len(n.Content); j += 2 {
				if n.Content[j].Value == p {
					child = n.Content[j+1]
				}
			}
			if child == nil {
				child = &yaml.Node{Kind: yaml.ScalarNode}
				if !last {
					child.Kind, child.Tag = yaml.MappingNode, "!!map"
				}
				n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: p}, child)
			}
			n = child
		case yaml.SequenceNode:
			idx, err := strconv.Atoi(p)
			if err != nil {
				idx = -1
				for j, e := range n.Content {
					if nameOf(e) == p {
						idx = j
					}
				}
			}
			if idx < 0 || idx >= len(n.Content) {
				return fmt.Errorf("%w: %s: no entry %q", ErrBadParam, path, p)
			}
			n = n.Content[idx]
		default:
			return fmt.Errorf("%w: %s: %q is a value, not a section", ErrBadParam, path, strings.Join(parts[:i], "."))
		}
	}
	var v yaml.Node
	if err := yaml.Unmarshal([]byte(value), &v); err != nil || len(v.Content) != 1 {
		*n = yaml.Node{Kind: yaml.ScalarNode, Value: value}
		return nil
	}
	*n = *v.Content[0]
	return nil
}

func nameOf(n *yaml.Node) string {
	if n.Kind != yaml.MappingNode {
		return ""
	}
	for j := 0; j+1 < len(n.Content); j += 2 {
		if n.Content[j].Value == "name" {
			return n.Content[j+1].Value
		}
	}
	return ""
}

// defaults fills what a scenario left out with the live binary's defaults.
func (s *Scenario) defaults() {
	if s.SampleEvery == 0 {
		s.SampleEvery = Duration(max(s.Duration.D()/120, time.Second))
	}
	g := &s.Gateways
	if g.Count == 0 {
		g.Count = 1
	}
	if g.AnnounceEvery == 0 {
		g.AnnounceEvery = Duration(time.Second)
	}
	if g.DeadAfter == 0 {
		g.DeadAfter = Duration(10 * time.Second)
	}
	if g.Retries == 0 {
		g.Retries = 2
	}
	r := &s.Reputation
	if r.Window == 0 {
		r.Window = Duration(14 * 24 * time.Hour)
	}
	if r.Bucket == 0 {
		r.Bucket = Duration(time.Hour)
	}
	if r.PublishEvery == 0 {
		r.PublishEvery = Duration(time.Minute)
	}
	if r.RampStart == 0 {
		r.RampStart = 0.10
	}
	if r.RampPeriod == 0 {
		r.RampPeriod = Duration(7 * 24 * time.Hour)
	}
	e := &s.Economy
	if e.ProviderBps == 0 {
		e.ProviderBps = 8000
	}
	if e.PoolBps == 0 {
		e.PoolBps = 2500
	}
	if e.FlapCut == 0 {
		e.FlapCut = 0.5
	}
	if e.FlapDecay == 0 {
		e.FlapDecay = Duration(72 * time.Hour)
	}
	if e.BountyEvery == 0 {
		e.BountyEvery = Duration(time.Minute)
	}
	for i := range s.Nodes {
		n := &s.Nodes[i]
		if n.Name == "" {
			n.Name = fmt.Sprint("group", i)
		}
		if n.Declared == 0 {
			n.Declared = n.Capacity
		}
		if n.TTFT == 0 {
			n.TTFT = Duration(200 * time.Millisecond)
		}
	}
	for i := range s.Models {
		if s.Models[i].Demand == 0 {
			s.Models[i].Demand = 1
		}
	}
}

// Validate reports a scenario that cannot run.
func (s *Scenario) Validate() error {
	bad := func(f string, a ...any) error { return fmt.Errorf("%w: "+f, append([]any{ErrBadParam}, a...)...) }
	switch {
	case s.Duration <= 0:
		return bad("duration must be positive")
	case len(s.Models) == 0:
		return bad("at least one model")
	case len(s.Nodes) == 0:
		return bad("at least one node group")
	case !(s.Consumers.Rate > 0) || math.IsInf(s.Consumers.Rate, 0):
		return bad("consumers.rate must be positive")
	case s.Consumers.OutputTokens.Min < 1 || s.Consumers.OutputTokens.Max < s.Consumers.OutputTokens.Min:
		return bad("consumers.output_tokens: want 1 <= min <= max")
	case s.Consumers.PromptTokens.Min < 0 || s.Consumers.PromptTokens.Max < s.Consumers.PromptTokens.Min:
		return bad("consumers.prompt_tokens: want 0 <= min <= max")
	case s.Consumers.BadInputShare < 0 || s.Consumers.BadInputShare > 1:
		return bad("consumers.bad_input_share outside [0,1]")
	case s.Gateways.Count < 1 || s.Gateways.Count > 10_000:
		return bad("gateways.count outside [1, 10000]")
	case s.Gateways.Retries < 0:
		return bad("gateways.retries must be >= 0")
	}
	for _, b := range s.Gateways.Baselines {
		if b != PolicyLeastLoaded && b != PolicyP2C {
			return bad("gateways.baselines: %q (want %s or %s)", b, PolicyLeastLoaded, PolicyP2C)
		}
	}
	models := map[string]bool{}
	for _, m := range s.Models {
		if m.Name == "" || models[m.Name] {
			return bad("models: empty or repeated name %q", m.Name)
		}
		if m.Demand < 0 || m.Swing < 0 || m.Swing > 1 || m.PriceInput < 0 || m.PriceOutput < 0 {
			return bad("model %s: negative demand or price, or swing outside [0,1]", m.Name)
		}
		models[m.Name] = true
	}
	total := 0
	groups := map[string]bool{}
	for _, n := range s.Nodes {
		if groups[n.Name] {
			return bad("nodes: repeated group name %q", n.Name)
		}
		groups[n.Name] = true
		if n.Model != "" && !models[n.Model] {
			return bad("nodes.%s.model %q is not in models", n.Name, n.Model)
		}
		if n.Count < 0 || n.Capacity < 1 || n.Declared < 1 || !(n.TokPerSec > 0) {
			return bad("nodes.%s: want count >= 0, capacity >= 1 and tok_s > 0", n.Name)
		}
		if n.FailRate < 0 || n.FailRate > 1 || n.Follow.Prob < 0 || n.Follow.Prob > 1 {
			return bad("nodes.%s: fail_rate and follow.prob must be in [0,1]", n.Name)
		}
		if (n.Churn.Every > 0) != (n.Churn.Down > 0) || (n.Episodes.Every > 0) != (n.Episodes.For > 0) {
			return bad("nodes.%s: churn and episodes need both of their durations", n.Name)
		}
		total += n.Count
	}
	if total == 0 || total > 10_000_000 {
		return bad("%d nodes: want 1 to 10,000,000", total)
	}
	for name, r := range s.Ratios {
		if !groups[r.Num] || !groups[r.Den] {
			return bad("ratios.%s: groups %q and %q must both exist", name, r.Num, r.Den)
		}
		if _, ok := groupFigures[r.Of]; !ok {
			return bad("ratios.%s.of %q: want one of %s", name, r.Of, strings.Join(figureNames(), ", "))
		}
	}
	for k, v := range s.Targets {
		if _, _, err := parseTarget(v); err != nil {
			return bad("targets.%s: %v", k, err)
		}
	}
	return nil
}
