package p2p

import (
	"fmt"
	"math"
	"net"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
)

// GossipSub peer scoring. A peer's score is the sum of its topic scores
// (TopicLoad only) and its application score (P5, from AppScores), plus
// the IP-colocation and behaviour penalties GossipSub keeps itself. The
// scale: one rejected announcement delivered counts -1 while it is the only
// one, n outstanding count -n² (P4 is squared); one unit of application
// penalty (one lie a gateway saw) counts -AppWeight. Honest peers earn at
// most +20 of topic score (P1 and P2, both capped at 10; the sum above 10
// is cut by TopicScoreCap), which absorbs about four honest rejects.
// TestScoreSimulation validates these numbers on a mesh of real hosts.
const (
	// GossipThreshold: below it, no gossip (IHAVE/IWANT) to or from the
	// peer: ~10 rejects outstanding, or 10 units of lies.
	GossipThreshold = -100
	// PublishThreshold: below it, this host's own announcements skip the
	// peer (~14 rejects, 20 units).
	PublishThreshold = -200
	// GraylistThreshold: below it, every message from the peer is dropped
	// unread (~20 rejects outstanding, 40 units of lies).
	GraylistThreshold = -400
	// AcceptPXThreshold: peer exchange is taken only from peers above it,
	// which topic scores alone (capped at 10) never reach: only trusted
	// peers (the configured bootstrap peers, +TrustedBonus units) do.
	AcceptPXThreshold = 15
	// OpportunisticGraftThreshold: when the median score of this host's
	// mesh is under it (peers there under ~2 minutes, or lazy), it grafts
	// better-scoring peers.
	OpportunisticGraftThreshold = 2
	// AppWeight is P5's weight: score points per unit of AppScores.
	AppWeight = 10
)

// ScoreParams returns GossipSub's peer-score parameters and thresholds for
// Token-Router's topics, with app as the application score (P5, in units:
// negative for lies seen, positive for trusted peers).
func ScoreParams(app func(peer.ID) float64) (*pubsub.PeerScoreParams, *pubsub.PeerScoreThresholds) {
	if app == nil {
		app = func(peer.ID) float64 { return 0 }
	}
	p := &pubsub.PeerScoreParams{
		// Only the load topic is scored. The health topic's validator
		// rejects other platforms' reports, which honest peers serving
		// another platform forward: scoring it would punish them.
		Topics:        map[string]*pubsub.TopicScoreParams{TopicLoad: loadTopicScore()},
		TopicScoreCap: 10, // good behaviour buys slack, not power: liars cannot bank credit
		// P5: what gateways saw a node do (AppScores), 10 points a lie.
		AppSpecificScore:  app,
		AppSpecificWeight: AppWeight,
		// P6: more than 10 peers on one public address is suspicious (a
		// Sybil farm), but GPU farms and carrier NATs share addresses too:
		// mild (20 peers -5: out of meshes; ~100 before graylisting), and
		// never for loopback or private ranges (dev meshes, LANs). GossipSub
		// already skips loopback and relayed connections.
		IPColocationFactorWeight:    -0.05,
		IPColocationFactorThreshold: 10,
		IPColocationFactorWhitelist: localNets,
		// P7: GossipSub's own protocol checks (grafting while backed off,
		// IWANT promises broken). Above 6 outstanding (queues overflow
		// under load: go-libp2p-pubsub#152), -1 per excess squared.
		BehaviourPenaltyWeight:    -1,
		BehaviourPenaltyThreshold: 6,
		BehaviourPenaltyDecay:     pubsub.ScoreParameterDecay(10 * time.Minute),
		DecayInterval:             time.Second,      // counters decay every second
		DecayToZero:               0.01,             // GossipSub's default
		RetainScore:               10 * time.Minute, // a liar does not reconnect clean
	}
	t := &pubsub.PeerScoreThresholds{
		GossipThreshold:             GossipThreshold,
		PublishThreshold:            PublishThreshold,
		GraylistThreshold:           GraylistThreshold,
		AcceptPXThreshold:           AcceptPXThreshold,
		OpportunisticGraftThreshold: OpportunisticGraftThreshold,
	}
	return p, t
}

// loadTopicScore scores deliveries on TopicLoad.
func loadTopicScore() *pubsub.TopicScoreParams {
	return &pubsub.TopicScoreParams{
		TopicWeight: 1,
		// P1: +1 a minute in this host's mesh, up to +10: a peer that
		// stayed has earned slack for a rare honest reject.
		TimeInMeshWeight:  1.0 / 60,
		TimeInMeshQuantum: time.Second,
		TimeInMeshCap:     600,
		// P2: +1 per announcement delivered first, up to +10, fading over
		// ~10 minutes: peers that bring news are worth keeping.
		FirstMessageDeliveriesWeight: 1,
		FirstMessageDeliveriesDecay:  pubsub.ScoreParameterDecay(10 * time.Minute),
		FirstMessageDeliveriesCap:    10,
		// P3 and P3b off: nodes announce every few seconds or less often
		// (the gossip budget spaces them), so a quiet honest mesh peer
		// would look like one withholding messages.
		// P4: -n² for n rejected announcements delivered, n fading to 1%
		// in 5 minutes: one honest reject is forgotten in minutes; a
		// peer rejecting one a second graylists in ~25 s.
		InvalidMessageDeliveriesWeight: -1,
		InvalidMessageDeliveriesDecay:  pubsub.ScoreParameterDecay(5 * time.Minute),
	}
}

// localNets are the address ranges P6 never counts.
var localNets = mustCIDRs("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
	"100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10")

func mustCIDRs(cidrs ...string) []*net.IPNet {
	out := make([]*net.IPNet, len(cidrs))
	for i, c := range cidrs {
		_, n, err := net.ParseCIDR(c)
		if err != nil {
			panic(fmt.Sprintf("p2p: bad CIDR %q: %v", c, err))
		}
		out[i] = n
	}
	return out
}

// ScoreOptions returns the GossipSub options that turn peer scoring on,
// with app as the application score (see ScoreParams).
func ScoreOptions(app func(peer.ID) float64) []pubsub.Option {
	p, t := ScoreParams(app)
	return []pubsub.Option{pubsub.WithPeerScore(p, t)}
}

// AppScoresConfig tunes an AppScores registry.
type AppScoresConfig struct {
	HalfLife     time.Duration    // how fast a penalty fades
	TrustedBonus float64          // units a trusted peer's score starts with
	InspectEvery time.Duration    // how often GossipSub's scores are copied for PeerScore
	MaxTracked   int              // peers with a penalty remembered at most
	Now          func() time.Time // nil = time.Now
}

// DefaultAppScoresConfig returns the defaults.
func DefaultAppScoresConfig() AppScoresConfig {
	return AppScoresConfig{
		HalfLife:     2 * time.Minute, // a liar is shunned for minutes, not forever: a stale view can be wrong
		TrustedBonus: 2,               // +20 points: above AcceptPXThreshold, so bootstrap peers' PX is taken
		InspectEvery: time.Second,     // as often as scores decay
		MaxTracked:   100_000,         // ~5 MB at worst
	}
}

// Validate reports a configuration that cannot work.
func (c AppScoresConfig) Validate() error {
	if c.HalfLife <= 0 || c.InspectEvery <= 0 || c.MaxTracked < 1 || c.TrustedBonus < 0 {
		return fmt.Errorf("p2p: app scores need a positive half-life, inspect period and size, and a bonus >= 0")
	}
	return nil
}

// AppScores is a host's application-specific peer scores (GossipSub's P5):
// penalties for what its gateway saw peers do (Penalize), fading with
// HalfLife, and a bonus for trusted peers. It also keeps the latest
// GossipSub score of every peer (PeerScore). Safe for concurrent use.
type AppScores struct {
	cfg AppScoresConfig

	mu      sync.Mutex
	pen     map[peer.ID]penalty
	trusted map[peer.ID]bool
	scores  map[peer.ID]float64 // GossipSub's, as of the last inspection
}

type penalty struct {
	units float64
	at    time.Time // when units was computed
}

// NewAppScores returns an empty registry.
func NewAppScores(cfg AppScoresConfig) (*AppScores, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &AppScores{cfg: cfg, pen: map[peer.ID]penalty{}, trusted: map[peer.ID]bool{}}, nil
}

// Trust gives p the trusted bonus (bootstrap peers).
func (s *AppScores) Trust(p peer.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.trusted[p] = true
}

// Penalize adds units of penalty to p (one unit: one lie seen).
func (s *AppScores) Penalize(p peer.ID, units float64) {
	if !(units > 0) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	if len(s.pen) >= s.cfg.MaxTracked {
		s.sweep(now)
	}
	s.pen[p] = penalty{units: s.decayed(p, now) + units, at: now}
}

// sweep forgets penalties that have faded to nothing, or the oldest half
// of them when none has.
func (s *AppScores) sweep(now time.Time) {
	for p := range s.pen {
		if s.decayed(p, now) < 0.01 {
			delete(s.pen, p)
		}
	}
	for p := range s.pen {
		if len(s.pen) < s.cfg.MaxTracked/2 {
			break
		}
		delete(s.pen, p)
	}
}

func (s *AppScores) decayed(p peer.ID, now time.Time) float64 {
	e, ok := s.pen[p]
	if !ok {
		return 0
	}
	return e.units * math.Exp2(-float64(now.Sub(e.at))/float64(s.cfg.HalfLife))
}

// Penalty is p's outstanding penalty in units.
func (s *AppScores) Penalty(p peer.ID) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.decayed(p, s.cfg.Now())
}

// Score is p's application score in units: the trusted bonus less its
// penalty. GossipSub calls it (P5) whenever it scores p.
func (s *AppScores) Score(p peer.ID) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := 0.0
	if s.trusted[p] {
		v = s.cfg.TrustedBonus
	}
	if len(s.pen) == 0 {
		return v
	}
	return v - s.decayed(p, s.cfg.Now())
}

// PeerScore is p's GossipSub score as of the last inspection, and whether
// GossipSub was scoring p then (a connected peer).
func (s *AppScores) PeerScore(p peer.ID) (float64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.scores[p]
	return v, ok
}

// inspect records GossipSub's scores (WithPeerScoreInspect).
func (s *AppScores) inspect(scores map[peer.ID]float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scores = scores
}

// Options returns the GossipSub options that score peers with s as the
// application score and keep PeerScore current.
func (s *AppScores) Options() []pubsub.Option {
	return append(ScoreOptions(s.Score),
		pubsub.WithPeerScoreInspect(pubsub.PeerScoreInspectFn(s.inspect), s.cfg.InspectEvery))
}

// hostScores is a new host's registry: default settings, its bootstrap
// peers trusted.
func hostScores(cfg Config) *AppScores {
	s, err := NewAppScores(DefaultAppScoresConfig())
	if err != nil {
		panic(err) // the defaults are valid
	}
	for _, a := range cfg.Bootstrap {
		if ai, err := peer.AddrInfoFromString(a); err == nil {
			s.Trust(ai.ID)
		}
	}
	return s
}
