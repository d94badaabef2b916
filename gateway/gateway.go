// Package gateway is the OpenAI-compatible HTTP endpoint consumers call. It
// checks API keys against the settlement peer, picks the least-loaded live
// instance from the gossiped view (gateway/route), forwards the call over a
// libp2p stream with failover before the first byte, relays SSE, puts the
// call's cost in usage, and sends a signed receipt for every paid call to
// the settlement peer.
package gateway

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/internal/journal"
	"github.com/tokenrouter/tokenrouter/internal/openai"
	"github.com/tokenrouter/tokenrouter/internal/tick"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// Response headers every client sees.
const (
	HeaderRequestID = "x-tokenrouter-request-id"
	HeaderNode      = "x-tokenrouter-node"
)

// Config configures a gateway.
type Config struct {
	Host              *p2p.Host
	Platform          peer.ID          // the settlement peer trusted for keys, prices and receipts
	HTTPAddr          string           // where the OpenAI-compatible API listens
	MaxBody           int64            // largest request body accepted
	BodyTimeout       time.Duration    // how long a client may take to send its request body
	MaxTokens         int64            // largest max_tokens / max_completion_tokens a call may ask for
	RequestsPerMinute int              // calls a minute per API key; 0 = no limit
	MaxRetries        int              // other instances tried after a failure before the first byte
	HeaderTimeout     time.Duration    // how long a node may take to start answering
	MaxCallTime       time.Duration    // how long one call may take in all
	IdleTimeout       time.Duration    // how long a stream may go without a chunk
	WriteTimeout      time.Duration    // how long a client may take to accept one write
	AuthTTL           time.Duration    // how long a checked API key (and its balance) is trusted
	PriceRefresh      time.Duration    // how often the price table is fetched again
	ReportEvery       time.Duration    // how often failures seen are reported to settlement
	DrainTimeout      time.Duration    // how long stopping waits for calls in flight and receipts
	Route             route.Config     // the routing policy (SPEC §4)
	Journal           *journal.Journal // where receipts wait for settlement (nil = memory only: a crash loses them)
	Credit            CreditConfig     // how credit lines are sized
	// DropReceipts makes the gateway bill its clients but never send
	// settlement a receipt: it plays a consumer's modified gateway in
	// tests (hidden flag --drop-receipts). The nodes' own claims bill
	// those calls.
	DropReceipts bool
	Logger       *slog.Logger // nil = discard
}

// DefaultConfig returns the defaults; Host, Platform and HTTPAddr must be set.
func DefaultConfig() Config {
	return Config{
		MaxBody:           8 << 20,          // long prompts fit; a runaway upload does not
		BodyTimeout:       time.Minute,      // 8 MiB at a slow 1 Mbit/s arrives in time; a stalled upload does not hold a slot
		MaxTokens:         131072,           // the longest context windows served today; engines cap below it anyway
		RequestsPerMinute: 0,                // a gateway of one's own needs no limit; public gateways set --rpm-limit
		MaxRetries:        2,                // SPEC §3: at most 2 retries
		HeaderTimeout:     60 * time.Second, // a loaded engine may queue before it answers
		MaxCallTime:       30 * time.Minute, // long generations at a few tok/s finish
		IdleTimeout:       time.Minute,      // a stalled engine does not hold a client for half an hour
		WriteTimeout:      30 * time.Second, // a client that stops reading frees the node's slot
		AuthTTL:           2 * time.Second,  // a revoked key or spent balance is seen within 2 s
		PriceRefresh:      time.Minute,      // price tables change rarely
		ReportEvery:       5 * time.Second,  // the health window is hourly; seconds are plenty
		DrainTimeout:      5 * time.Second,  // calls in flight get their claims; undelivered receipts wait in the journal
		Route:             route.DefaultConfig(),
		Credit:            DefaultCreditConfig(),
	}
}

// Validate reports a configuration the gateway cannot run with.
func (c *Config) Validate() error {
	switch {
	case c.Host == nil:
		return errors.New("gateway: a host is required")
	case c.Platform == "":
		return errors.New("gateway: the settlement peer id is required (--platform)")
	case c.MaxBody <= 0 || c.BodyTimeout <= 0 || c.MaxTokens <= 0 || c.RequestsPerMinute < 0 || c.MaxRetries < 0 || c.HeaderTimeout <= 0 || c.MaxCallTime <= 0 || c.IdleTimeout <= 0 || c.WriteTimeout <= 0 || c.ReportEvery <= 0 || c.DrainTimeout <= 0 || c.AuthTTL <= 0 || c.PriceRefresh <= 0:
		return errors.New("gateway: limits and timeouts must be positive")
	}
	return c.Route.Validate()
}

// Gateway is a running gateway.
type Gateway struct {
	cfg      Config
	log      *slog.Logger
	view     *View
	auth     *authCache
	credit   *creditLines
	limits   *keyLimits // nil = no per-key limit
	outcomes outcomes
	calls    sync.WaitGroup // calls in flight, for a clean stop
	settler  *settler
	streams  *streamPool
	reg      *prometheus.Registry
	metrics  metrics

	pmu    sync.RWMutex
	prices economy.PriceTable
}

// New checks cfg and returns a gateway ready to Run.
func New(cfg Config) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var seed [8]byte
	rand.Read(seed[:])
	g := &Gateway{
		cfg:  cfg,
		log:  log,
		view: NewView(cfg.Host.ID().String(), cfg.Route, time.Now, p2p.MaxAnnouncementAge, binary.LittleEndian.Uint64(seed[:])),
		reg:  prometheus.NewRegistry(),
	}
	g.metrics = newMetrics(g.reg)
	g.auth = newAuthCache(cfg.Host, cfg.Platform, cfg.AuthTTL)
	g.credit = newCreditLines(cfg.Host, cfg.Platform, cfg.Credit)
	g.limits = newKeyLimits(cfg.RequestsPerMinute)
	g.settler = newSettler(cfg.Host, cfg.Platform, log, g.metrics, cfg.Journal)
	g.streams = newStreamPool(func(ctx context.Context, node peer.ID) (network.Stream, error) {
		return cfg.Host.NewStream(ctx, node, p2p.ProtoInfer)
	}, g.metrics)
	g.watchMetrics()
	return g, nil
}

// View is the gateway's view of the network.
func (g *Gateway) View() *View { return g.view }

// Run follows the load topic, fetches prices, serves HTTP and sends receipts
// until ctx ends. ready is called with the bound HTTP address once it serves.
// On the way out it lets calls in flight finish and delivers their receipts.
func (g *Gateway) Run(ctx context.Context, ready func(httpAddr string)) error {
	ln, err := net.Listen("tcp", g.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("gateway: listen %s: %w", g.cfg.HTTPAddr, err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	topic, err := p2p.JoinLoadTopic(g.cfg.Host, nil)
	if err != nil {
		return fmt.Errorf("gateway: join load topic: %w", err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		return fmt.Errorf("gateway: subscribe: %w", err)
	}
	defer sub.Cancel()
	wg.Go(func() { g.view.follow(ctx, g.cfg.Host, sub, g.cfg.Platform.String(), g.log) })
	wg.Go(func() { g.view.expireLoop(ctx, time.Second) })
	if err := g.view.watchConnections(ctx, g.cfg.Host, &wg); err != nil {
		return fmt.Errorf("gateway: watch connections: %w", err)
	}
	g.view.followMembers(ctx, g.cfg.Host, &wg)
	if err := g.refreshPrices(ctx); err != nil {
		return err
	}
	wg.Go(func() { g.keepPrices(ctx) })
	if err := g.followScores(ctx, &wg); err != nil {
		return fmt.Errorf("gateway: follow health scores: %w", err)
	}
	if err := g.followRevocations(ctx, &wg); err != nil {
		return fmt.Errorf("gateway: follow key revocations: %w", err)
	}
	wg.Go(func() { g.reportLoop(ctx, g.cfg.ReportEvery) })
	wg.Go(func() { g.streams.run(ctx) })
	if err := g.settler.resume(); err != nil {
		return err
	}
	// Receipts outlive the HTTP server: they are delivered after it stops.
	sctx, stopSettler := context.WithCancel(context.Background())
	settlerDone := make(chan struct{})
	go func() { g.settler.run(sctx); close(settlerDone) }()
	defer func() { stopSettler(); <-settlerDone }()

	srv := &http.Server{Handler: g.Handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	// net/http's own errors (a bad request line, 431) in OpenAI's shape.
	go func() { errc <- srv.Serve(openai.Listener(ln)) }()
	g.log.Info("gateway up", "http", ln.Addr().String(), "peer", g.cfg.Host.ID().String())
	if ready != nil {
		ready(ln.Addr().String())
	}
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	// Stop taking calls, let those in flight end (streams get their claims),
	// then deliver every receipt before the host goes away.
	shutdown, cancelShutdown := context.WithTimeout(context.Background(), g.cfg.DrainTimeout)
	defer cancelShutdown()
	if serr := srv.Shutdown(shutdown); serr != nil && err == nil && !errors.Is(serr, context.DeadlineExceeded) {
		err = serr
	}
	g.waitCalls(g.cfg.DrainTimeout)
	g.settler.flush(g.cfg.DrainTimeout)
	g.credit.release(context.Background()) // what is left returns to the accounts now, not at expiry
	return err
}

// waitCalls waits up to d for calls in flight to end.
func (g *Gateway) waitCalls(d time.Duration) {
	done := make(chan struct{})
	go func() { g.calls.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		g.log.Error("gateway stopping with calls still in flight")
	}
}

// refreshPrices fetches the price table, retrying until the settlement peer answers or ctx ends.
func (g *Gateway) refreshPrices(ctx context.Context) error {
	backoff := 200 * time.Millisecond
	for {
		err := g.fetchPrices(ctx)
		if err == nil {
			return nil
		}
		g.log.Warn("waiting for the settlement peer's prices", "platform", g.cfg.Platform.String(), "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("gateway: settlement peer unreachable: %w", err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// fetchPrices asks the settlement peer for its price table once.
func (g *Gateway) fetchPrices(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := g.cfg.Host.CallSettle(cctx, g.cfg.Platform, &p2p.SettleRequest{Op: p2p.OpPrices})
	if err != nil {
		return err
	}
	if resp.Prices == nil {
		return errors.New("no price table in the answer")
	}
	g.pmu.Lock()
	g.prices = *resp.Prices
	g.pmu.Unlock()
	return nil
}

func (g *Gateway) keepPrices(ctx context.Context) {
	tick.Every(ctx, g.cfg.PriceRefresh, func(time.Time) {
		if err := g.fetchPrices(ctx); err != nil && ctx.Err() == nil {
			g.log.Warn("price table not refreshed", "err", err)
		}
	})
}

func (g *Gateway) price(model string) economy.Price {
	g.pmu.RLock()
	defer g.pmu.RUnlock()
	return g.prices.For(model)
}
