// Package settlement is the platform peer: it keeps the books. It serves
// accounts over HTTP (POST /v1/accounts, GET /v1/account), answers nodes and
// gateways over /tokenrouter/settle/1 (API key checks, prices, node
// registration) and takes receipts, committing each paid call's 80/20 split
// to the Pebble ledger in one fsync'd batch before acknowledging it. With
// Config.Cloud it also hosts cloud-account nodes (POST /v1/nodes/cloud): a
// provider.Node per registered cloud API, its token sealed at rest.
package settlement

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tokenrouter/tokenrouter/internal/openai"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// Config configures the settlement peer.
type Config struct {
	Host           *p2p.Host
	Ledger         *ledger.Ledger
	Prices         economy.PriceTable
	PriceHistory   string               // file keeping the tables served within PriceGrace ("" = memory only)
	HTTPAddr       string               // "" = no HTTP API
	Terms          economy.Terms        // the split of every paid call (80/20) and the pool's funding
	Flap           economy.FlapConfig   // the payout cut after a model switch
	Trust          economy.TrustConfig  // tiers and the bounties they unlock
	Bounty         economy.BountyConfig // when a model counts as under-supplied
	StartingCredit int64                // µcr granted to every new account
	SignupLimit    int                  // accounts per client address per SignupWindow; 0 = unlimited
	SignupWindow   time.Duration        // the window SignupLimit counts over
	Reputation     ReputationConfig
	Cloud          CloudConfig // hosted cloud-account nodes; off unless Cloud.Dir is set
	// ClaimGrace is how long a node's own claim waits for its gateway's
	// receipt before it bills the call by itself.
	ClaimGrace time.Duration
	// ProbeRotate is how long the prober keeps one identity (peer id and
	// probe account) before it takes a new one.
	ProbeRotate time.Duration
	Logger      *slog.Logger // nil = discard
}

// DefaultConfig returns the defaults; Host and Ledger must be set.
func DefaultConfig() Config {
	return Config{
		Prices:         economy.DefaultPriceTable(),
		Terms:          economy.DefaultTerms(),      // SPEC §5: 80% to the provider, the rest to the platform
		Flap:           economy.DefaultFlapConfig(), // SPEC §5: a switch halves payouts, decaying over 72 h
		Trust:          economy.DefaultTrustConfig(),
		Bounty:         economy.DefaultBountyConfig(),
		StartingCredit: economy.StartingCreditUcr, // SPEC §2: 5.000000 credits
		SignupLimit:    5,                         // SPEC §2: 5 an hour per client address
		SignupWindow:   time.Hour,
		Reputation:     DefaultReputationConfig(),
		Cloud:          DefaultCloudConfig(),
		ClaimGrace:     2 * time.Minute,  // gateways send receipts within ~50 ms and retry for minutes through outages
		ProbeRotate:    10 * time.Minute, // ten probes a node at most from one peer id, as from one more gateway
	}
}

// Validate reports a configuration the peer cannot run with.
func (c *Config) Validate() error {
	switch {
	case c.Host == nil:
		return errors.New("settlement: a host is required")
	case c.Ledger == nil:
		return errors.New("settlement: a ledger is required")
	case c.Terms.Validate() != nil:
		return c.Terms.Validate()
	case c.Flap.Validate() != nil:
		return c.Flap.Validate()
	case c.Trust.Validate() != nil:
		return c.Trust.Validate()
	case c.Bounty.Validate() != nil:
		return c.Bounty.Validate()
	case c.StartingCredit < 0:
		return errors.New("settlement: starting credit cannot be negative")
	case c.ClaimGrace <= 0:
		return errors.New("settlement: the claim grace must be positive")
	case c.ProbeRotate <= 0:
		return errors.New("settlement: the probe identity rotation must be positive")
	case c.SignupLimit < 0:
		return errors.New("settlement: signup limit cannot be negative")
	case c.Cloud.Validate() != nil:
		return c.Cloud.Validate()
	}
	return c.Reputation.Validate()
}

// Settlement is a running settlement peer.
type Settlement struct {
	cfg        Config
	log        *slog.Logger
	led        *ledger.Ledger
	signups    *rateLimiter
	rep        *Reputation
	gateways   gatewayBook
	intake     *intake
	stopped    chan struct{} // closed once the intake stops taking receipts
	demand     demand
	bmu        sync.RWMutex
	bounties   *bountyState
	prices     *priceHistory
	grantMu    sync.RWMutex
	grantsOK   map[[64]byte]grantFields // grant signatures already verified
	reg        *prometheus.Registry
	metrics    metrics
	cloud      *cloudNodes // nil when hosted cloud nodes are off
	claims     *p2p.ClaimVerifier
	book       *claimBook    // nodes' own claims, unreceipted calls, disputes
	prober     *prober       // probes from rotating identities, shaped like consumers' calls
	revoked    *pubsub.Topic // API key revocations, for every gateway at once
	sessions   *sessions     // signed-in dashboard users
	keyChanges *rateLimiter  // API keys created and revoked, per account
}

// New checks cfg and returns a settlement peer ready to Run.
func New(cfg Config) (*Settlement, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Settlement{
		cfg:     cfg,
		log:     log,
		led:     cfg.Ledger,
		signups: newRateLimiter(cfg.SignupLimit, cfg.SignupWindow),
		rep:     NewReputation(cfg.Reputation),
		reg:     prometheus.NewRegistry(),
	}
	s.metrics = newMetrics(s.reg)
	s.watchMetrics()
	s.intake = &intake{s: s, ch: make(chan *checked, maxCommitBatch)}
	var err error
	if s.claims, err = p2p.NewClaimVerifier(cfg.Host.Key); err != nil {
		return nil, fmt.Errorf("settlement: claim verifier: %w", err)
	}
	if s.prices, err = loadPriceHistory(cfg.PriceHistory, cfg.Prices, time.Now()); err != nil {
		return nil, err
	}
	if s.revoked, err = joinRevoked(cfg.Host); err != nil {
		return nil, fmt.Errorf("settlement: revocation topic: %w", err)
	}
	s.sessions = newSessions()
	s.keyChanges = newRateLimiter(maxKeyChanges, time.Hour)
	s.stopped = make(chan struct{})
	s.book = newClaimBook()
	s.prober = newProber(s)
	if err := s.loadClaims(); err != nil {
		return nil, fmt.Errorf("settlement: node claims: %w", err)
	}
	if f := cfg.Reputation.SnapshotFile; f != "" {
		if err := s.rep.Load(f); err != nil {
			return nil, err
		}
	}
	if cfg.Cloud.Dir != "" {
		if s.cloud, err = newCloudNodes(s, cfg.Cloud); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Run serves the settlement protocol and, with HTTPAddr, the HTTP API until
// ctx ends. ready is called with the bound HTTP address ("" without HTTP).
func (s *Settlement) Run(ctx context.Context, ready func(httpAddr string)) error {
	p2p.ServeSettle(s.cfg.Host, s.handle)
	defer s.cfg.Host.RemoveStreamHandler(p2p.ProtoSettle)
	p2p.ServeReceipts(s.cfg.Host, s.handleReceipts)
	defer s.cfg.Host.RemoveStreamHandler(p2p.ProtoReceipts)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	repDone := make(chan error, 1)
	go func() { repDone <- s.runReputation(ctx) }()
	var loops sync.WaitGroup
	loops.Go(func() {
		s.intake.run(ctx)
		close(s.stopped)
		s.intake.drain()
	})
	loops.Go(func() { s.expireLoop(ctx, 5*time.Second) })
	loops.Go(func() { s.claimLoop(ctx, min(time.Second, s.cfg.ClaimGrace/4)) })
	loops.Go(func() { s.bountyLoop(ctx, 10*time.Second) })
	if s.cloud != nil {
		loops.Go(func() { s.cloud.run(ctx) })
	}
	defer func() { cancel(); <-repDone; loops.Wait(); s.prober.close() }()
	if s.cfg.HTTPAddr == "" {
		if ready != nil {
			ready("")
		}
		<-ctx.Done()
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("settlement: listen %s: %w", s.cfg.HTTPAddr, err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	// net/http's own errors (a bad request line, 431) in OpenAI's shape.
	go func() { errc <- srv.Serve(openai.Listener(ln)) }()
	s.log.Info("settlement HTTP up", "addr", ln.Addr().String())
	if ready != nil {
		ready(ln.Addr().String())
	}
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	case err := <-errc:
		return err
	}
}

// Reputation is the peer's health window.
func (s *Settlement) Reputation() *Reputation { return s.rep }

// Ledger is the peer's ledger.
func (s *Settlement) Ledger() *ledger.Ledger { return s.led }

// accountInfo renders an account for the wire and the HTTP API.
func (s *Settlement) accountInfo(a ledger.AccountState) *p2p.AccountInfo {
	disputes, unrec := s.claimStanding(a.ID)
	return &p2p.AccountInfo{
		Disputes:         disputes,
		UnreceiptedCalls: unrec,
		Account:          a.ID,
		BalanceUcr:       a.Balance,
		EarnedUcr:        a.Earned,
		SpentUcr:         a.Spent,
		Calls:            a.Calls,
		StartingCredit:   a.StartingCredit,
		HeldUcr:          a.Held,
		AvailableUcr:     a.Available(),
		Balance:          economy.FormatCredits(a.Balance),
		Earned:           economy.FormatCredits(a.Earned),
		Spent:            economy.FormatCredits(a.Spent),
	}
}
