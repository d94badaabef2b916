package settlement

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/nodecore/provider"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// CloudConfig configures hosted cloud-account nodes: nodes the platform
// runs for an account that brought a cloud provider's API (base URL and
// token) instead of hardware. Each runs in this process as a provider.Node
// with its own libp2p identity, earning for the account that registered it.
type CloudConfig struct {
	Dir           string        // records (nodes.json) and one identity per node (<Dir>/<id>/); "" = hosted nodes are off
	Box           *SecretBox    // seals the API tokens; required with Dir
	Listen        []string      // libp2p addresses each hosted node listens on; nil = the settlement peer's, port 0
	Bootstrap     []string      // bootstrap peers of hosted nodes; nil = the settlement peer's, plus the settlement peer
	CheckTimeout  time.Duration // how long registration waits for the upstream's /models
	MaxPerAccount int           // hosted nodes one account may have
	MaxNodes      int           // hosted nodes on this settlement peer in all
	MaxCapacity   int           // the largest capacity a hosted node may declare
	Hardware      string        // what hosted nodes announce as their hardware
	// AllowPrivate lets hosted nodes call plain http to a loopback host and
	// loopback, private, link-local and other non-public addresses: for
	// local engines in development, never on a public platform.
	AllowPrivate bool
}

// DefaultCloudConfig returns the defaults; Dir and Box turn hosted nodes on.
func DefaultCloudConfig() CloudConfig {
	return CloudConfig{
		CheckTimeout:  10 * time.Second,                     // a cloud API answers /models in well under a second
		MaxPerAccount: 8,                                    // one per provider or region is plenty; bounds what a free account costs
		MaxNodes:      256,                                  // each is a libp2p host and a few goroutines in this process
		MaxCapacity:   256,                                  // far above what a single API key is allowed concurrently
		Hardware:      "cloud API (hosted by the platform)", // announcements have no hosted flag yet: say it here
		AllowPrivate:  false,                                // an account must not make the platform call its own network (SSRF)
	}
}

// Validate reports a configuration hosted nodes cannot run with.
func (c *CloudConfig) Validate() error {
	switch {
	case c.Dir == "":
		return nil
	case c.Box == nil:
		return errors.New("settlement: hosted cloud nodes need a master key (Cloud.Box)")
	case c.CheckTimeout <= 0 || c.MaxPerAccount < 1 || c.MaxNodes < 1 || c.MaxCapacity < 1:
		return errors.New("settlement: cloud node limits and check timeout must be positive")
	}
	return nil
}

// Hosted node states, as GET /v1/nodes/cloud shows them.
const (
	cloudStarting = "starting" // host up, waiting for the upstream's models
	cloudServing  = "serving"  // announcing and taking calls
	cloudFailed   = "failed"   // stopped with an error; restarted after a pause
	cloudStopped  = "stopped"  // the settlement peer is shutting down
)

// hostedNode is one hosted cloud node while the settlement peer runs.
type hostedNode struct {
	rec    cloudRecord
	token  string // in memory only; never logged or returned
	status string
	err    string // why it last failed, token redacted
	node   *provider.Node
	cancel context.CancelFunc
	done   chan struct{} // closed when its runner returns; nil if never started
}

// cloudNodes runs the hosted cloud nodes of a settlement peer.
type cloudNodes struct {
	s     *Settlement
	cfg   CloudConfig
	log   *slog.Logger
	store *cloudStore
	tr    http.RoundTripper // shared by every hosted node's upstream; enforces the address policy

	mu    sync.Mutex
	order []string // record ids, oldest first
	nodes map[string]*hostedNode
	ctx   context.Context // set while running; nil before Run and after it
}

// newCloudNodes opens the records and their tokens; a wrong master key is an error here.
func newCloudNodes(s *Settlement, cfg CloudConfig) (*cloudNodes, error) {
	st, recs, tokens, err := openCloudStore(cfg.Dir, cfg.Box)
	if err != nil {
		return nil, err
	}
	c := &cloudNodes{s: s, cfg: cfg, log: s.log.With("component", "cloud"), store: st, tr: newCloudTransport(cfg.AllowPrivate),
		nodes: map[string]*hostedNode{}}
	for i, r := range recs {
		c.order = append(c.order, r.ID)
		c.nodes[r.ID] = &hostedNode{rec: r, token: tokens[i], status: cloudStopped}
	}
	if len(recs) > 0 {
		c.log.Info("hosted cloud nodes loaded", "nodes", len(recs), "master_key", cfg.Box.KeyID())
	}
	return c, nil
}

// upstream is the engine adapter of a hosted node: its token (which the
// node redacts from every error text it relays or logs), and a client that
// dials through the shared transport, which refuses addresses the policy
// does not allow.
func (c *cloudNodes) upstream(baseURL, token string) *engine.Upstream {
	return &engine.Upstream{BaseURL: baseURL, Token: token, Client: &http.Client{Transport: c.tr}}
}

// run starts every hosted node and stops them all when ctx ends.
func (c *cloudNodes) run(ctx context.Context) {
	c.mu.Lock()
	c.ctx = ctx
	for _, id := range c.order {
		c.startLocked(c.nodes[id])
	}
	c.mu.Unlock()
	<-ctx.Done()
	c.mu.Lock()
	c.ctx = nil
	var waits []chan struct{}
	for _, hn := range c.nodes {
		if hn.done != nil {
			waits = append(waits, hn.done)
		}
	}
	c.mu.Unlock()
	for _, d := range waits {
		<-d
	}
}

// startLocked starts hn's runner if the peer is running (c.mu held).
func (c *cloudNodes) startLocked(hn *hostedNode) {
	if c.ctx == nil || hn.done != nil {
		return
	}
	ctx, cancel := context.WithCancel(c.ctx)
	hn.cancel, hn.done, hn.status = cancel, make(chan struct{}), cloudStarting
	go c.serve(ctx, hn)
}

// serve runs hn until ctx ends, restarting it after a pause when it fails.
func (c *cloudNodes) serve(ctx context.Context, hn *hostedNode) {
	defer close(hn.done)
	log := slog.New(redactHandler{inner: c.log.Handler(), secret: hn.token}).With("cloud_node", hn.rec.ID)
	pause := time.Second
	for {
		err := c.serveOnce(ctx, hn, log)
		if ctx.Err() != nil {
			c.setStatus(hn, cloudStopped, "", nil)
			return
		}
		if err == nil {
			err = errors.New("the node stopped")
		}
		msg := redact(err.Error(), hn.token)
		c.setStatus(hn, cloudFailed, msg, nil)
		log.Warn("hosted cloud node failed; restarting", "err", msg, "in", pause)
		select {
		case <-ctx.Done():
			c.setStatus(hn, cloudStopped, "", nil)
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, time.Minute)
	}
}

// serveOnce runs hn's libp2p host and provider.Node until ctx ends or it fails.
func (c *cloudNodes) serveOnce(ctx context.Context, hn *hostedNode, log *slog.Logger) error {
	// A record registered under a looser policy (an earlier start with
	// AllowPrivate) fails here with the rule; the dialer refuses host names
	// that resolve to a refused address.
	if err := allowed(hn.rec.BaseURL, c.cfg.AllowPrivate); err != nil {
		return err
	}
	h, err := p2p.NewHost(ctx, p2p.Config{
		DataDir:   c.dir(hn.rec.ID),
		Listen:    c.listen(),
		Bootstrap: c.bootstrap(),
		Logger:    log,
	})
	if err != nil {
		return err
	}
	defer h.Close()
	if h.ID().String() != hn.rec.PeerID {
		return fmt.Errorf("identity of %s changed: peer %s, registered as %s", hn.rec.ID, h.ID(), hn.rec.PeerID)
	}
	// The settlement peer is the authority that links nodes to accounts: it
	// links its own hosted node directly, as a signed registration would.
	if err := c.s.led.LinkNode(hn.rec.PeerID, hn.rec.Account); err != nil {
		return fmt.Errorf("link to account: %w", err)
	}
	pc := provider.DefaultConfig()
	pc.Host, pc.Platform, pc.Logger = h, c.s.cfg.Host.ID(), log
	pc.Upstream = c.upstream(hn.rec.BaseURL, hn.token)
	pc.Models, pc.Hardware, pc.Linked = hn.rec.Models, c.cfg.Hardware, true
	if hn.rec.Capacity > 0 {
		pc.Capacity = hn.rec.Capacity
	}
	// A cloud API key's concurrency limit is the whole account's, not a
	// model's: the declared capacity caps calls across every model.
	pc.MaxInFlight = pc.Capacity
	n, err := provider.New(pc)
	if err != nil {
		return err
	}
	c.setStatus(hn, cloudStarting, "", n)
	return n.Run(ctx, func() {
		c.setStatus(hn, cloudServing, "", n)
		log.Info("hosted cloud node serving", "peer", hn.rec.PeerID, "account", hn.rec.Account, "models", n.Models())
	})
}

func (c *cloudNodes) setStatus(hn *hostedNode, status, errMsg string, n *provider.Node) {
	c.mu.Lock()
	defer c.mu.Unlock()
	hn.status, hn.err, hn.node = status, errMsg, n
}

// listen is where hosted nodes listen: the configured addresses, else the
// settlement peer's own listen addresses with OS-chosen ports.
func (c *cloudNodes) listen() []string {
	if len(c.cfg.Listen) > 0 {
		return c.cfg.Listen
	}
	var out []string
	for _, a := range c.s.cfg.Host.Network().ListenAddresses() {
		s := anyPort.ReplaceAllString(a.String(), "/$1/0")
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return p2p.DefaultListen
	}
	return out
}

var anyPort = regexp.MustCompile(`/(tcp|udp)/[0-9]+`)

// bootstrap is who hosted nodes bootstrap from: the configured peers, else
// the settlement peer's bootstrap peers; the settlement peer itself is always
// one, so hosted nodes join the gossip mesh even without bootstrap peers.
func (c *cloudNodes) bootstrap() []string {
	out := append([]string(nil), c.cfg.Bootstrap...)
	h := c.s.cfg.Host
	if len(c.cfg.Bootstrap) == 0 {
		for _, ai := range h.Bootstrap() {
			addrs, _ := peer.AddrInfoToP2pAddrs(&ai)
			for _, a := range addrs {
				out = append(out, a.String())
			}
		}
	}
	if self := selfAddr(h); self != "" {
		out = append(out, self)
	}
	return out
}

// selfAddr is one full address of h, a loopback one when there is one
// (hosted nodes run in the same process).
func selfAddr(h *p2p.Host) string {
	addrs := h.FullAddrs()
	for _, a := range addrs {
		if strings.HasPrefix(a, "/ip4/127.") || strings.HasPrefix(a, "/ip6/::1/") {
			return a
		}
	}
	if len(addrs) > 0 {
		return addrs[0]
	}
	return ""
}

// view renders hn for the HTTP API (c.mu held). The token is never in it.
func (c *cloudNodes) viewLocked(hn *hostedNode) CloudNode {
	v := CloudNode{
		ID: hn.rec.ID, Object: "cloud_node", Account: hn.rec.Account, PeerID: hn.rec.PeerID,
		BaseURL: hn.rec.BaseURL, Models: append([]string{}, hn.rec.Models...), ServedModels: []string{},
		Capacity: hn.rec.Capacity, Status: hn.status, Error: hn.err, TokenSet: len(hn.rec.SealedToken) > 0,
		Created: hn.rec.Created.Unix(),
	}
	if hn.node != nil && hn.status == cloudServing {
		v.ServedModels = hn.node.Models()
	}
	return v
}

// dir holds a hosted node's identity.
func (c *cloudNodes) dir(id string) string { return filepath.Join(c.cfg.Dir, id) }

// full reports whether account may not add another hosted node.
func (c *cloudNodes) full(account string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fullLocked(account)
}

func (c *cloudNodes) fullLocked(account string) error {
	if len(c.nodes) >= c.cfg.MaxNodes {
		return errCloudFull
	}
	n := 0
	for _, hn := range c.nodes {
		if hn.rec.Account == account {
			n++
		}
	}
	if n >= c.cfg.MaxPerAccount {
		return errCloudAccountFull
	}
	return nil
}

// add stores a new record and starts its node.
func (c *cloudNodes) add(rec cloudRecord, token string) (CloudNode, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.fullLocked(rec.Account); err != nil {
		return CloudNode{}, err
	}
	recs := c.recordsLocked()
	if err := c.store.save(append(recs, rec)); err != nil {
		return CloudNode{}, err
	}
	hn := &hostedNode{rec: rec, token: token, status: cloudStopped}
	c.order = append(c.order, rec.ID)
	c.nodes[rec.ID] = hn
	c.startLocked(hn)
	return c.viewLocked(hn), nil
}

// errCloudFull and errCloudAccountFull are the registration limits.
var (
	errCloudFull        = errors.New("this settlement peer hosts as many cloud nodes as it may")
	errCloudAccountFull = errors.New("this account has as many hosted cloud nodes as it may")
)

func (c *cloudNodes) recordsLocked() []cloudRecord {
	recs := make([]cloudRecord, 0, len(c.order))
	for _, id := range c.order {
		recs = append(recs, c.nodes[id].rec)
	}
	return recs
}

// list returns account's hosted nodes, oldest first.
func (c *cloudNodes) list(account string) []CloudNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []CloudNode{}
	for _, id := range c.order {
		if hn := c.nodes[id]; hn.rec.Account == account {
			out = append(out, c.viewLocked(hn))
		}
	}
	return out
}

// get returns one of account's hosted nodes.
func (c *cloudNodes) get(account, id string) (CloudNode, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	hn, ok := c.nodes[id]
	if !ok || hn.rec.Account != account {
		return CloudNode{}, false
	}
	return c.viewLocked(hn), true
}

// remove forgets one of account's hosted nodes, stops it and deletes its
// identity. The ledger keeps its link to the account, so receipts for calls
// it served before still pay the account.
func (c *cloudNodes) remove(account, id string) (bool, error) {
	c.mu.Lock()
	hn, ok := c.nodes[id]
	if !ok || hn.rec.Account != account {
		c.mu.Unlock()
		return false, nil
	}
	recs := slices.DeleteFunc(c.recordsLocked(), func(r cloudRecord) bool { return r.ID == id })
	if err := c.store.save(recs); err != nil {
		c.mu.Unlock()
		return true, err
	}
	delete(c.nodes, id)
	c.order = slices.DeleteFunc(c.order, func(s string) bool { return s == id })
	cancel, done := hn.cancel, hn.done
	c.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	if err := os.RemoveAll(c.dir(id)); err != nil {
		c.log.Warn("could not delete a removed cloud node's identity", "cloud_node", id, "err", err)
	}
	c.log.Info("hosted cloud node removed", "cloud_node", id, "peer", hn.rec.PeerID, "account", account)
	return true, nil
}
