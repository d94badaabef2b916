// Package provider is the running node: it serves /tokenrouter/infer/1
// streams by calling its upstream engine (always asking for usage), measures
// its load and generation rate, announces them on GossipSub, signs a claim
// for every call it served, and links itself to its operator's account.
package provider

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tokenrouter/tokenrouter/internal/journal"
	"github.com/tokenrouter/tokenrouter/nodecore"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// Config configures a node.
type Config struct {
	Host       *p2p.Host
	Upstream   *engine.Upstream
	Platform   peer.ID  // the settlement peer to register with
	AccountKey string   // API key of the operator's account; "" = earnings accrue to node:<peer id>
	Linked     bool     // linked to its account by the settlement peer itself (hosted nodes): no AccountKey, no registration
	Models     []string // models to serve; empty = every model the engine lists
	Capacity   int      // concurrent calls per model this node takes, unless ModelCapacity names the model
	// ModelCapacity overrides Capacity for the models it names (by the
	// engine's id or its canonical name: "llama3.2:latest" and "llama3.2"
	// are one model). A model that is full answers node_full without
	// affecting the others.
	ModelCapacity map[string]int
	// MaxInFlight caps the calls in flight across all models (0 = no cap
	// beyond each model's capacity): for an upstream whose limit is the
	// whole engine's, such as a cloud API key's concurrency.
	MaxInFlight int
	Synthetic   bool          // the upstream is the synthetic engine (shown in announcements)
	Hardware    string        // shown in announcements; "" = a CPU description
	Logger      *slog.Logger  // nil = discard
	Announce    time.Duration // minimum gap between announcements on change
	Heartbeat   time.Duration // an announcement at least this often even without change, unless Gossip asks for less
	// Gossip spaces announcements as the network grows, so the load topic
	// costs each gateway a bounded number of bytes a second (see
	// nodecore.GossipBudget); Members counts the announcers it divides
	// that among (nil = the host's membership, or 1 without one).
	Gossip       nodecore.GossipBudget
	Members      func() int
	MaxBody      int64         // largest upstream response body read for a non-streamed call
	MaxRequest   int64         // largest request body a gateway may send
	WriteTimeout time.Duration // a gateway that reads nothing for this long loses the stream
	// StreamLinger is the longest a streamed chunk may wait to share its
	// write to the gateway with the next, when chunks come faster than one
	// per StreamLinger (see lingerFlusher); 0 sends each chunk at once.
	StreamLinger time.Duration
	// ClaimEvery is how often a flowing stream carries the node's claim for
	// its output so far (p2p.FrameClaim): if the node dies before its
	// trailer, the gateway bills that claim, so at most ClaimEvery of
	// delivered output goes unpaid.
	ClaimEvery time.Duration
	// ClaimKey authenticates the node's claims and signs its claim batches
	// instead of the host's key (nil = the host's key). Only tests set it,
	// to play a node whose MACs and signatures do not match its peer id.
	ClaimKey crypto.PrivKey
	// ClaimLog keeps the node's own claims until the settlement peer
	// acknowledges them (nil = memory only: a crash loses the unsent ones,
	// which their gateways' receipts still bill).
	ClaimLog *journal.Journal
	// ClaimHook, when set, alters every claim before it is MAC'd. Only
	// tests set it, to play a node that inflates its claims.
	ClaimHook func(*p2p.NodeClaim)
	// OnCall, when set, is told of every call's request header and the
	// peer that sent it. Only tests set it.
	OnCall func(from string, req p2p.InferRequest)
}

// DefaultConfig returns the defaults; Host, Upstream and Platform must be set.
func DefaultConfig() Config {
	return Config{
		Capacity:     8,               // a modest GPU batch; operators raise it with --capacity
		Announce:     time.Second,     // SPEC: at most every second
		Heartbeat:    3 * time.Second, // well inside the 10 s freshness window validators apply
		Gossip:       nodecore.DefaultGossipBudget(),
		MaxBody:      32 << 20,               // embeddings of long inputs stay well below this
		MaxRequest:   8 << 20,                // the gateway's own limit
		WriteTimeout: 30 * time.Second,       // far above any healthy client's pause
		StreamLinger: 500 * time.Microsecond, // under a token's time at 1,000 tok/s; a stream at 100k chunks/s shares one write per ~50
		ClaimEvery:   time.Second,            // a node killed mid-stream loses at most a second of pay; a MAC a second costs nothing
	}
}

// Validate reports a configuration a node cannot run with.
func (c *Config) Validate() error {
	switch {
	case c.Host == nil:
		return errors.New("provider: a host is required")
	case c.Upstream == nil || c.Upstream.BaseURL == "":
		return errors.New("provider: an upstream engine URL is required (--upstream)")
	case c.Platform == "":
		return errors.New("provider: the settlement peer id is required (--platform)")
	case c.Capacity < 1:
		return fmt.Errorf("provider: capacity must be at least 1, got %d", c.Capacity)
	case c.modelCapacityErr() != nil:
		return c.modelCapacityErr()
	case c.MaxInFlight < 0:
		return fmt.Errorf("provider: max in flight must be 0 (no cap) or more, got %d", c.MaxInFlight)
	case c.Announce < 100*time.Millisecond || c.Heartbeat < c.Announce:
		return errors.New("provider: announce interval must be >= 100ms and heartbeat >= announce")
	case c.Gossip.Validate() != nil:
		return c.Gossip.Validate()
	case c.MaxBody <= 0 || c.MaxRequest <= 0 || c.WriteTimeout <= 0:
		return errors.New("provider: body limits and write timeout must be positive")
	case c.StreamLinger < 0 || c.StreamLinger > 100*time.Millisecond:
		return fmt.Errorf("provider: stream linger must be between 0 and 100ms, got %s", c.StreamLinger)
	case c.ClaimEvery < 10*time.Millisecond:
		return fmt.Errorf("provider: claims during a stream must be at least 10ms apart, got %s", c.ClaimEvery)
	}
	return nil
}

// ParseModelCapacity reads --model-capacity values, each NAME=N (the name
// may itself hold ':' and '/'; it ends at the last '='), into
// Config.ModelCapacity. Two entries for one model (by canonical name) are
// an error.
func ParseModelCapacity(entries []string) (map[string]int, error) {
	out := make(map[string]int, len(entries))
	seen := make(map[string]string, len(entries))
	for _, e := range entries {
		i := strings.LastIndexByte(e, '=')
		if i <= 0 {
			return nil, fmt.Errorf("--model-capacity %q: want NAME=N", e)
		}
		name := e[:i]
		n, err := strconv.Atoi(e[i+1:])
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--model-capacity %q: N must be a whole number of at least 1", e)
		}
		canon := engine.CanonicalModel(name)
		if prev, ok := seen[canon]; ok {
			return nil, fmt.Errorf("--model-capacity names one model twice: %q and %q", prev, name)
		}
		seen[canon] = name
		out[name] = n
	}
	return out, nil
}

// modelCapacityErr reports a ModelCapacity entry a node cannot run with.
func (c *Config) modelCapacityErr() error {
	for name, n := range c.ModelCapacity {
		if name == "" || n < 1 {
			return fmt.Errorf("provider: model capacity %q=%d: a model name and a capacity of at least 1 are required", name, n)
		}
	}
	return nil
}

// Node is a running provider.
type Node struct {
	cfg   Config
	log   *slog.Logger
	topic *pubsub.Topic

	mu        sync.Mutex
	models    []string             // announced (canonical) names, in the engine's order
	instances map[string]*instance // by announced name
	inFlight  int                  // calls in flight across models, for MaxInFlight
	tokPerS   float64              // EWMA of measured generation rate
	changed   chan struct{}
	seq       uint64
	account   string
	claims    *claimMemory
	claimAuth *p2p.ClaimAuth // MACs each claim for the settlement peer
	reporter  *claimReporter // sends the node's own claims to the settlement peer
	stats     callStats      // what Stats reports (stats.go)
	reg       *prometheus.Registry
	metrics   metrics // what an operator scrapes (metrics.go)
}

// instance is one model this node serves, with its own capacity and load.
type instance struct {
	engine   string         // the engine's own id for the model, sent upstream
	capacity int            // concurrent calls it takes
	inFlight int            // calls in flight
	byPeer   map[string]int // calls in flight per gateway
}

// New checks cfg and returns a node ready to Run.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Hardware == "" {
		cfg.Hardware = DetectHardware()
	}
	key := cfg.ClaimKey
	if key == nil {
		key = cfg.Host.Key
	}
	auth, err := p2p.NewClaimAuth(key, cfg.Platform, cfg.Host.ID(), cfg.Platform)
	if err != nil {
		return nil, fmt.Errorf("provider: claim key for the settlement peer %s: %w", cfg.Platform, err)
	}
	n := &Node{
		cfg:       cfg,
		claimAuth: auth,
		log:       log,
		instances: map[string]*instance{},
		changed:   make(chan struct{}, 1),
		seq:       uint64(time.Now().UnixNano()),        // grows across restarts, so validators accept a restarted node
		claims:    newClaimMemory(time.Hour, 1_000_000), // gateways ask for batch signatures within seconds
		reporter:  newClaimReporter(cfg.Host, cfg.Platform, log, cfg.ClaimLog),
	}
	n.initMetrics()
	return n, nil
}

// Run discovers the engine's models, registers with the settlement peer,
// serves inference streams and announces load until ctx ends. ready is
// called once the node serves.
func (n *Node) Run(ctx context.Context, ready func()) error {
	if err := n.discoverModels(ctx); err != nil {
		return err
	}
	if err := n.register(ctx); err != nil {
		return err
	}
	topic, err := p2p.JoinLoadTopic(n.cfg.Host, nil)
	if err != nil {
		return fmt.Errorf("provider: join load topic: %w", err)
	}
	n.topic = topic
	n.cfg.Host.SetStreamHandler(p2p.ProtoInfer, n.serveInfer(ctx))
	defer n.cfg.Host.RemoveStreamHandler(p2p.ProtoInfer)
	p2p.ServeClaims(n.cfg.Host, n.cfg.ClaimKey, n.claims.known)
	defer n.cfg.Host.RemoveStreamHandler(p2p.ProtoClaims)
	reportsDone := make(chan struct{})
	go func() { n.reporter.run(ctx); close(reportsDone) }()
	defer func() { <-reportsDone }() // it writes and tries to send what is left
	n.log.Info("node serving", "peer", n.cfg.Host.ID().String(), "models", n.Models(), "capacity", n.cfg.Capacity, "model_capacity", n.cfg.ModelCapacity)
	if ready != nil {
		ready()
	}
	n.announceLoop(ctx)
	return nil
}

// Models returns the models this node serves, by the names it announces.
func (n *Node) Models() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.models...)
}

func (n *Node) discoverModels(ctx context.Context) error {
	if len(n.cfg.Models) > 0 {
		n.setModels(n.cfg.Models)
		return nil
	}
	backoff := 200 * time.Millisecond
	for {
		mctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ms, err := n.cfg.Upstream.Models(mctx)
		cancel()
		if err == nil && len(ms) > 0 {
			names := make([]string, len(ms))
			for i, m := range ms {
				names[i] = m.ID
				if m.OwnedBy == "synthetic" {
					n.cfg.Synthetic = true // the synthetic engine says so itself: label it wherever it shows
				}
			}
			n.setModels(names)
			return nil
		}
		if err == nil {
			err = errors.New("the engine lists no models")
		}
		n.log.Warn("waiting for the engine", "upstream", n.cfg.Upstream.BaseURL, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("provider: engine at %s not reachable: %w", n.cfg.Upstream.BaseURL, err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// setModels serves the engine's models ids under their canonical names
// (engine.CanonicalModel): "llama3.2:latest" is announced as "llama3.2".
// Should an engine list both forms, the id equal to the canonical name is
// the one sent upstream.
func (n *Node) setModels(ids []string) {
	caps := make(map[string]int, len(n.cfg.ModelCapacity))
	for name, c := range n.cfg.ModelCapacity {
		caps[engine.CanonicalModel(name)] = c
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.models = nil
	n.instances = make(map[string]*instance, len(ids))
	for _, id := range ids {
		name := engine.CanonicalModel(id)
		if in, ok := n.instances[name]; ok {
			if id == name {
				in.engine = id
			}
			continue
		}
		capacity := n.cfg.Capacity
		if c, ok := caps[name]; ok {
			capacity = c
		}
		n.models = append(n.models, name)
		n.instances[name] = &instance{engine: id, capacity: capacity, byPeer: map[string]int{}}
	}
	for name := range caps {
		if n.instances[name] == nil {
			n.log.Warn("--model-capacity names a model this node does not serve", "model", name, "models", n.models)
		}
	}
}

// acquire takes a slot on model (any name whose canonical form the node
// serves) for gateway gw. It returns the instance's engine id; ok is false
// when the node does not serve the model, full when the model is at its
// capacity or the node at MaxInFlight.
func (n *Node) acquire(model, gw string) (engineID string, ok, full bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	in := n.instances[engine.CanonicalModel(model)]
	if in == nil {
		return "", false, false
	}
	if in.inFlight >= in.capacity || n.cfg.MaxInFlight > 0 && n.inFlight >= n.cfg.MaxInFlight {
		return in.engine, true, true
	}
	n.inFlight++
	in.inFlight++
	in.byPeer[gw]++
	return in.engine, true, false
}

// release gives back a slot acquire took.
func (n *Node) release(model, gw string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	in := n.instances[engine.CanonicalModel(model)]
	if in == nil {
		return
	}
	n.inFlight = max(n.inFlight-1, 0)
	in.inFlight = max(in.inFlight-1, 0)
	if in.byPeer[gw]--; in.byPeer[gw] <= 0 {
		delete(in.byPeer, gw)
	}
}

// register links this node to the operator's account, retrying while the
// settlement peer is unreachable and failing on a key it rejects.
func (n *Node) register(ctx context.Context) error {
	if n.cfg.Linked {
		return nil // the settlement peer linked this node itself (a hosted node)
	}
	if n.cfg.AccountKey == "" {
		n.log.Warn("no --account-key: earnings accrue to this node's own account until it is linked")
		return nil
	}
	backoff := 200 * time.Millisecond
	for {
		reg := &p2p.NodeRegistration{Node: n.cfg.Host.ID().String(), APIKey: n.cfg.AccountKey, TimeMs: time.Now().UnixMilli()}
		if err := reg.Sign(n.cfg.Host.Key); err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := n.cfg.Host.CallSettle(cctx, n.cfg.Platform, &p2p.SettleRequest{Op: p2p.OpRegister, Register: reg})
		cancel()
		var rpcErr *p2p.RPCError
		switch {
		case err == nil && resp.Account != nil:
			n.mu.Lock()
			n.account = resp.Account.Account
			n.mu.Unlock()
			n.log.Info("node linked to account", "account", resp.Account.Account)
			return nil
		case errors.As(err, &rpcErr):
			return fmt.Errorf("provider: settlement refused the registration: %w", err)
		}
		n.log.Warn("waiting for the settlement peer", "platform", n.cfg.Platform.String(), "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("provider: settlement peer unreachable: %w", err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// Account is the account this node earns for ("" until linked).
func (n *Node) Account() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.account
}

func (n *Node) markChanged() {
	select {
	case n.changed <- struct{}{}:
	default:
	}
}
