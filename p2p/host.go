package p2p

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	kaddht "github.com/libp2p/go-libp2p-kad-dht"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"
)

// Files a running role writes into its data directory so scripts and tests
// can wait for it (SPEC §7).
const (
	AddrsFile    = "addrs"     // multiaddrs with /p2p/<id>, one a line
	PeerIDFile   = "peer-id"   // the peer id
	ReadyFile    = "ready"     // written once the role serves
	HTTPAddrFile = "http-addr" // the HTTP address a role with --http bound to
	// MetricsAddrFile is the address a role's --metrics listener bound to.
	MetricsAddrFile = "metrics-addr"
)

// Config describes a libp2p host for one role.
type Config struct {
	DataDir      string        // holds identity.key and the files above
	Listen       []string      // multiaddrs to listen on
	Bootstrap    []string      // multiaddrs (with /p2p/) of bootstrap peers to dial first
	RelayService bool          // offer circuit relay v2 to others (bootstrap peers)
	NATService   bool          // offer AutoNAT dial-backs to others (bootstrap peers)
	PeerExchange bool          // give pruned GossipSub peers other peers to connect to (bootstrap peers)
	Logger       *slog.Logger  // nil = discard
	RedialEvery  time.Duration // how often lost bootstrap connections are redialled
	DHTServer    bool          // answer DHT queries for others (bootstrap peers); others run the DHT in auto mode (dht.go)
	Reachability string        // "" = AutoNAT decides; "private" or "public" forces it (tests; nat.go)
	Membership   bool          // run failure detection (membership.go), joining the bootstrap peers
}

// DefaultListen is where a role listens when no --listen is given: every
// interface, an OS-chosen port, TCP and QUIC (QUIC helps hole punching).
var DefaultListen = []string{"/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"}

// Validate reports a configuration that cannot start.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("p2p: a data directory is required")
	}
	if err := checkReachability(c.Reachability); err != nil {
		return err
	}
	for _, s := range append(append([]string{}, c.Listen...), c.Bootstrap...) {
		if _, err := ma.NewMultiaddr(s); err != nil {
			return fmt.Errorf("p2p: bad multiaddr %q: %w", s, err)
		}
	}
	for _, s := range c.Bootstrap {
		if _, err := peer.AddrInfoFromString(s); err != nil {
			return fmt.Errorf("p2p: bootstrap address %q needs /p2p/<peer id>: %w", s, err)
		}
	}
	return nil
}

// Host is a libp2p host with GossipSub and Token-Router's discovery.
type Host struct {
	host.Host
	PubSub  *pubsub.PubSub
	Key     crypto.PrivKey
	Members *Membership // failure detection; nil unless Config.Membership
	Scores  *AppScores  // GossipSub's application scores: what this host's gateway saw peers do (score.go)

	cfg       Config
	log       *slog.Logger
	bootstrap []peer.AddrInfo
	dht       *kaddht.IpfsDHT // peer routing beyond the bootstrap peers (dht.go)
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	topicMu sync.Mutex
	topics  map[string]*pubsub.Topic

	idString string // ID().String(), which encodes base58 on every call

	stats hostStats // gossip verdicts and relay counts, for the roles' metrics (metrics.go)
}

// IDString is h.ID().String(), computed once: claims and receipts carry it
// on every call.
func (h *Host) IDString() string { return h.idString }

// topic joins name once per host, registering validator the first time;
// every role in the process shares the topic (a node may also be a
// gateway). Callers subscribe to it but never close it.
func (h *Host) topic(name string, validator func() pubsub.ValidatorEx) (*pubsub.Topic, error) {
	h.topicMu.Lock()
	defer h.topicMu.Unlock()
	if t, ok := h.topics[name]; ok {
		return t, nil
	}
	if err := h.PubSub.RegisterTopicValidator(name, h.counted(name, validator())); err != nil {
		return nil, err
	}
	t, err := h.PubSub.Join(name)
	if err != nil {
		h.PubSub.UnregisterTopicValidator(name)
		return nil, err
	}
	if h.topics == nil {
		h.topics = map[string]*pubsub.Topic{}
	}
	h.topics[name] = t
	return t, nil
}

// NewHost loads (or creates) the identity in cfg.DataDir, starts listening,
// starts GossipSub, serves discovery, keeps bootstrap connections up and
// writes the addrs and peer-id files.
func NewHost(ctx context.Context, cfg Config) (*Host, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(cfg.Listen) == 0 {
		cfg.Listen = DefaultListen
	}
	if cfg.RedialEvery <= 0 {
		cfg.RedialEvery = 2 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	key, err := LoadOrCreateIdentity(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	opts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.ListenAddrStrings(cfg.Listen...),
		// Several hosts may live in one process (dev, tests): keep libp2p's
		// collectors off the global Prometheus registry.
		libp2p.DisableMetrics(),
	}
	opts = append(opts, natOptions(cfg, key, log)...)
	rm, err := resourceManager()
	if err != nil {
		return nil, err
	}
	opts = append(opts, libp2p.ResourceManager(rm))
	var relay *relayStats
	if cfg.RelayService {
		relay = &relayStats{}
		opts = append(opts, libp2p.EnableRelayService(append(relayServiceOptions(), relayv2.WithMetricsTracer(relay))...))
	}
	if cfg.NATService {
		opts = append(opts, libp2p.EnableNATService())
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("p2p: start host: %w", err)
	}
	bctx, cancel := context.WithCancel(context.Background())
	scores := hostScores(cfg)
	ps, err := pubsub.NewGossipSub(bctx, h, append(scores.Options(),
		pubsub.WithPeerExchange(cfg.PeerExchange),
		pubsub.WithMaxMessageSize(MaxGossipMessage),
	)...)
	if err != nil {
		cancel()
		h.Close()
		return nil, fmt.Errorf("p2p: start gossipsub: %w", err)
	}
	hh := &Host{Host: h, PubSub: ps, Scores: scores, Key: key, cfg: cfg, log: log, cancel: cancel, idString: h.ID().String()}
	hh.stats.relay = relay
	for _, s := range cfg.Bootstrap {
		ai, _ := peer.AddrInfoFromString(s)
		if ai.ID == h.ID() {
			continue
		}
		hh.bootstrap = append(hh.bootstrap, *ai)
	}
	h.SetStreamHandler(ProtoDiscover, hh.serveDiscover)
	hh.watchNAT(bctx)
	if err := hh.startDHT(bctx); err != nil {
		hh.Close()
		return nil, err
	}
	if err := hh.writeIdentityFiles(); err != nil {
		hh.Close()
		return nil, err
	}
	hh.connectBootstrap(ctx)
	hh.wg.Add(1)
	go hh.keepBootstrap(bctx)
	if cfg.Membership {
		if err := hh.startMembership(bctx); err != nil {
			hh.Close()
			return nil, err
		}
	}
	log.Info("p2p host up", "peer", h.ID().String(), "addrs", hh.FullAddrs())
	return hh, nil
}

// resourceManager is libp2p's default resource manager (the same limits)
// without its metrics. libp2p.DisableMetrics does not reach the default
// one, whose stats reporter formats a timestamp and takes a lock for every
// stream opened and closed: about 5% of a gateway's CPU under load.
func resourceManager() (network.ResourceManager, error) {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()), rcmgr.WithMetricsDisabled())
	if err != nil {
		return nil, fmt.Errorf("p2p: resource manager: %w", err)
	}
	return rm, nil
}

// Close leaves the membership, then stops background work and the host.
func (h *Host) Close() error {
	if h.Members != nil {
		h.Members.Close()
	}
	h.cancel()
	err := h.Host.Close()
	h.wg.Wait()
	return err
}

// FullAddrs returns the host's multiaddrs with /p2p/<id> appended.
func (h *Host) FullAddrs() []string {
	ais, _ := peer.AddrInfoToP2pAddrs(&peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()})
	out := make([]string, len(ais))
	for i, a := range ais {
		out[i] = a.String()
	}
	return out
}

// DataDir is the role's data directory.
func (h *Host) DataDir() string { return h.cfg.DataDir }

func (h *Host) writeIdentityFiles() error {
	dir := h.cfg.DataDir
	if err := WriteFileAtomic(filepath.Join(dir, PeerIDFile), []byte(h.ID().String()+"\n"), 0o644); err != nil {
		return fmt.Errorf("p2p: write peer-id: %w", err)
	}
	addrs := strings.Join(h.FullAddrs(), "\n") + "\n"
	if err := WriteFileAtomic(filepath.Join(dir, AddrsFile), []byte(addrs), 0o644); err != nil {
		return fmt.Errorf("p2p: write addrs: %w", err)
	}
	return nil
}

// WriteReady marks the role as serving (dir/ready).
func WriteReady(dir string) error {
	return WriteFileAtomic(filepath.Join(dir, ReadyFile), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644)
}

// WriteHTTPAddr records the address an HTTP listener bound to (dir/http-addr).
func WriteHTTPAddr(dir, addr string) error {
	return WriteFileAtomic(filepath.Join(dir, HTTPAddrFile), []byte(addr+"\n"), 0o644)
}

// RemoveRunFiles deletes ready, http-addr and metrics-addr so a stopped role does not look alive.
func RemoveRunFiles(dir string) {
	os.Remove(filepath.Join(dir, ReadyFile))
	os.Remove(filepath.Join(dir, HTTPAddrFile))
	os.Remove(filepath.Join(dir, MetricsAddrFile))
}

func (h *Host) connectBootstrap(ctx context.Context) {
	var wg sync.WaitGroup
	for _, ai := range h.bootstrap {
		if h.Network().Connectedness(ai.ID) == network.Connected {
			continue
		}
		wg.Add(1)
		go func(ai peer.AddrInfo) {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if err := h.Connect(cctx, ai); err != nil {
				h.log.Warn("bootstrap dial failed", "peer", ai.ID.String(), "err", err)
			}
		}(ai)
	}
	wg.Wait()
}

func (h *Host) keepBootstrap(ctx context.Context) {
	defer h.wg.Done()
	t := time.NewTicker(h.cfg.RedialEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			h.connectBootstrap(ctx)
		}
	}
}

// Bootstrap returns the bootstrap peers this host dials.
func (h *Host) Bootstrap() []peer.AddrInfo { return h.bootstrap }
