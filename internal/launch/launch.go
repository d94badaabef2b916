// Package launch wires each role into a running process the same way for
// the CLI, `tokenrouter dev` and tests: data directory, libp2p host, the
// role itself, and the files scripts wait on (addrs, peer-id, ready,
// http-addr; SPEC §7).
package launch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/bootstrap"
	"github.com/tokenrouter/tokenrouter/gateway"
	"github.com/tokenrouter/tokenrouter/internal/journal"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/nodecore/provider"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// Common are the flags every long-running role understands.
type Common struct {
	Data      string
	Listen    []string
	Bootstrap []string
	Logger    *slog.Logger
	// Metrics is where a listener of the role's own serves GET /metrics
	// ("" = none; metrics.go).
	Metrics string
}

func (c Common) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

func (c Common) host(ctx context.Context, cfg p2p.Config) (*p2p.Host, error) {
	if c.Data == "" {
		return nil, errors.New("--data is required")
	}
	cfg.DataDir, cfg.Listen, cfg.Bootstrap, cfg.Logger = c.Data, c.Listen, c.Bootstrap, c.logger()
	p2p.RemoveRunFiles(c.Data)
	return p2p.NewHost(ctx, cfg)
}

func ready(dir string, log *slog.Logger, role string) {
	if err := p2p.WriteReady(dir); err != nil {
		log.Error("cannot write the ready file", "err", err)
	}
	log.Info(role+" ready", "data", dir)
}

func parsePlatform(s string) (peer.ID, error) {
	if s == "" {
		return "", errors.New("--platform (the settlement peer's id) is required")
	}
	id, err := peer.Decode(s)
	if err != nil {
		return "", fmt.Errorf("--platform %q is not a peer id: %w", s, err)
	}
	return id, nil
}

// Bootstrap runs a bootstrap peer until ctx ends.
func Bootstrap(ctx context.Context, c Common) error {
	h, err := c.host(ctx, bootstrap.HostConfig(c.Data, c.Listen, c.Bootstrap))
	if err != nil {
		return err
	}
	defer h.Close()
	defer p2p.RemoveRunFiles(c.Data)
	stopMetrics, err := c.serveMetrics(bootstrap.Metrics(h)) // metrics.go
	if err != nil {
		return err
	}
	defer stopMetrics()
	defer serveStatus(ctx, c, h, bootstrapStatus(h))() // status.go
	return bootstrap.Run(ctx, h, func() { ready(c.Data, c.logger(), "bootstrap") })
}

// SettleOptions configure a settlement peer.
type SettleOptions struct {
	Common
	HTTP        string
	PricesFile  string
	SignupLimit int
	RampStart   float64       // fraction of declared capacity a new instance starts at (0 = default)
	RampPeriod  time.Duration // time to full capacity (0 = default)
	ProbeEvery  time.Duration // probe interval (0 = default)
	ClaimGrace  time.Duration // how long a node's claim waits for its receipt (0 = default)
	ProbeRotate time.Duration // how long the prober keeps one identity (0 = default)
	// MasterKey seals hosted cloud nodes' API tokens: 32 bytes as hex or
	// base64, the value of TOKENROUTER_MASTER_KEY. "" = MasterKeyFile.
	MasterKey string
	// MasterKeyFile holds the master key when MasterKey is empty; created
	// (0600) on first start. "" = <data>/master.key.
	MasterKeyFile string
	// CloudAllowPrivate lets hosted cloud nodes call loopback, private and
	// link-local addresses, and plain http to loopback (local engines; `dev`
	// sets it). Off, they call public addresses over https only.
	CloudAllowPrivate bool
}

// Settle runs a settlement peer until ctx ends; its ledger lives in
// <data>/ledger, hosted cloud nodes in <data>/cloud.
func Settle(ctx context.Context, o SettleOptions) error {
	log := o.logger()
	cfg := settlement.DefaultConfig()
	if o.PricesFile != "" {
		t, err := economy.LoadPriceTable(o.PricesFile)
		if err != nil {
			return err
		}
		cfg.Prices = t
	}
	cfg.SignupLimit = o.SignupLimit
	if o.RampStart > 0 {
		cfg.Reputation.Ramp.Start = o.RampStart
	}
	if o.RampPeriod > 0 {
		cfg.Reputation.Ramp.Period = o.RampPeriod
	}
	if o.ProbeEvery > 0 {
		cfg.Reputation.ProbeEvery = o.ProbeEvery
	}
	if o.ClaimGrace > 0 {
		cfg.ClaimGrace = o.ClaimGrace
	}
	if o.ProbeRotate > 0 {
		cfg.ProbeRotate = o.ProbeRotate
	}
	cfg.Reputation.SnapshotFile = filepath.Join(o.Data, "health.json")
	cfg.PriceHistory = filepath.Join(o.Data, "price-history.json")
	cfg.HTTPAddr = o.HTTP
	cfg.Logger = log
	h, err := o.host(ctx, p2p.Config{Membership: true})
	if err != nil {
		return err
	}
	defer h.Close()
	defer p2p.RemoveRunFiles(o.Data)
	led, err := ledger.Open(filepath.Join(o.Data, "ledger"), ledger.Options{Logger: log, Signer: h.Key})
	if err != nil {
		return fmt.Errorf("open ledger: %w", err)
	}
	defer led.Close()
	cfg.Host, cfg.Ledger = h, led
	keyFile := o.MasterKeyFile
	if keyFile == "" {
		keyFile = filepath.Join(o.Data, settlement.MasterKeyFile)
	}
	if cfg.Cloud.Box, err = settlement.LoadMasterKey(o.MasterKey, keyFile); err != nil {
		return err
	}
	log.Info("master key for cloud tokens", "source", cfg.Cloud.Box.Source(), "key_id", cfg.Cloud.Box.KeyID())
	cfg.Cloud.Dir = filepath.Join(o.Data, "cloud")
	cfg.Cloud.AllowPrivate = o.CloudAllowPrivate
	if o.CloudAllowPrivate {
		log.Warn("hosted cloud nodes may call plain http and private addresses (--" + settlement.AllowPrivateFlag +
			"): for local engines only, never on a public platform")
	}
	s, err := settlement.New(cfg)
	if err != nil {
		return err
	}
	stopMetrics, err := o.serveMetrics(s.Metrics()) // metrics.go
	if err != nil {
		return err
	}
	defer stopMetrics()
	defer serveStatus(ctx, o.Common, h, settleStatus(s))() // status.go
	return s.Run(ctx, func(addr string) {
		if addr != "" {
			if err := p2p.WriteHTTPAddr(o.Data, addr); err != nil {
				log.Error("cannot write http-addr", "err", err)
			}
		}
		ready(o.Data, log, "settle")
	})
}

// NodeOptions configure a node.
type NodeOptions struct {
	Common
	Platform          string
	Upstream          string
	UpstreamTokenFile string
	AccountKey        string
	Capacity          int            // concurrent calls per model (0 = the node default)
	ModelCapacity     map[string]int // per-model overrides of Capacity (--model-capacity NAME=N)
	MaxInFlight       int            // calls in flight across all models (0 = no cap)
	Models            []string
	Synthetic         bool
	// Tune, when set, adjusts the configuration last (tests use it).
	Tune func(*provider.Config)
}

// Node runs a node until ctx ends.
func Node(ctx context.Context, o NodeOptions) error {
	log := o.logger()
	platform, err := parsePlatform(o.Platform)
	if err != nil {
		return err
	}
	if o.Upstream == "" {
		return errors.New("--upstream (the engine's OpenAI-compatible base URL) is required")
	}
	up := &engine.Upstream{BaseURL: o.Upstream}
	if o.UpstreamTokenFile != "" {
		tok, err := os.ReadFile(o.UpstreamTokenFile)
		if err != nil {
			return fmt.Errorf("--upstream-token-file: %w", err)
		}
		up.Token = string(bytes.TrimSpace(tok))
	}
	h, err := o.host(ctx, p2p.Config{Membership: true})
	if err != nil {
		return err
	}
	defer h.Close()
	defer p2p.RemoveRunFiles(o.Data)
	cfg := provider.DefaultConfig()
	cfg.Host, cfg.Upstream, cfg.Platform = h, up, platform
	cfg.AccountKey, cfg.Models, cfg.Synthetic, cfg.Logger = o.AccountKey, o.Models, o.Synthetic, log
	if o.Capacity > 0 {
		cfg.Capacity = o.Capacity
	}
	cfg.ModelCapacity, cfg.MaxInFlight = o.ModelCapacity, o.MaxInFlight
	jcfg := journal.DefaultConfig()
	jcfg.Logger = log
	// Claims back up receipts: written a second's worth at a time, fsync'd
	// within 100 ms of that.
	jcfg.SyncInterval = 100 * time.Millisecond
	claims, err := journal.OpenConfig(filepath.Join(o.Data, "claims"), jcfg)
	if err != nil {
		return fmt.Errorf("claim log: %w", err)
	}
	defer claims.Close()
	cfg.ClaimLog = claims
	if o.Tune != nil {
		o.Tune(&cfg)
	}
	n, err := provider.New(cfg)
	if err != nil {
		return err
	}
	stopMetrics, err := o.serveMetrics(n.Metrics()) // metrics.go
	if err != nil {
		return err
	}
	defer stopMetrics()
	defer serveStatus(ctx, o.Common, h, nodeStatus(n))() // status.go
	return n.Run(ctx, func() { ready(o.Data, log, "node") })
}

// GatewayOptions configure a gateway.
type GatewayOptions struct {
	Common
	Platform    string
	HTTP        string
	MaxBody     int64         // 0 = the default
	MaxTokens   int64         // 0 = the default
	RPMLimit    int           // calls a minute per API key; 0 = no limit
	HeaderTime  time.Duration // how long a node may take to start answering; 0 = the default
	MaxCallTime time.Duration // 0 = the default
	IdleTime    time.Duration // 0 = the default
	// JournalSyncEach fsyncs each receipt before its call is answered.
	JournalSyncEach bool
	// DropReceipts: never send receipts (a dishonest gateway, for tests).
	DropReceipts bool
	// Tune, when set, adjusts the configuration last (tests use it).
	Tune func(*gateway.Config)
}

// Gateway runs a gateway until ctx ends.
func Gateway(ctx context.Context, o GatewayOptions) error {
	log := o.logger()
	platform, err := parsePlatform(o.Platform)
	if err != nil {
		return err
	}
	h, err := o.host(ctx, p2p.Config{Membership: true})
	if err != nil {
		return err
	}
	defer h.Close()
	defer p2p.RemoveRunFiles(o.Data)
	jcfg := journal.DefaultConfig()
	jcfg.SyncEach, jcfg.Logger = o.JournalSyncEach, log
	jr, err := journal.OpenConfig(filepath.Join(o.Data, "journal"), jcfg)
	if err != nil {
		return err
	}
	defer jr.Close()
	cfg := gateway.DefaultConfig()
	cfg.Host, cfg.Platform, cfg.HTTPAddr, cfg.Logger, cfg.Journal = h, platform, o.HTTP, log, jr
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:8080"
	}
	cfg.DropReceipts = o.DropReceipts
	setIf(&cfg.MaxBody, o.MaxBody)
	setIf(&cfg.MaxTokens, o.MaxTokens)
	setIf(&cfg.RequestsPerMinute, o.RPMLimit)
	setIf(&cfg.HeaderTimeout, o.HeaderTime)
	setIf(&cfg.MaxCallTime, o.MaxCallTime)
	setIf(&cfg.IdleTimeout, o.IdleTime)
	if o.Tune != nil {
		o.Tune(&cfg)
	}
	g, err := gateway.New(cfg)
	if err != nil {
		return err
	}
	stopMetrics, err := o.serveMetrics(g.Metrics()) // metrics.go
	if err != nil {
		return err
	}
	defer stopMetrics()
	defer serveStatus(ctx, o.Common, h, gatewayStatus(g))() // status.go
	return g.Run(ctx, func(addr string) {
		if err := p2p.WriteHTTPAddr(o.Data, addr); err != nil {
			log.Error("cannot write http-addr", "err", err)
		}
		ready(o.Data, log, "gateway")
	})
}

// EngineOptions configure a synthetic engine.
type EngineOptions struct {
	Listen string
	Data   string // optional: where http-addr and ready are written
	Config engine.SyntheticConfig
	Logger *slog.Logger
}

// Engine serves the synthetic engine until ctx ends. bound, if not nil, is
// called with the address it listens on.
func Engine(ctx context.Context, o EngineOptions, bound func(addr string)) error {
	o.Config.Logger = o.Logger
	s, err := engine.NewSynthetic(o.Config)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("engine: listen %s: %w", o.Listen, err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	addr := ln.Addr().String()
	if o.Data != "" {
		if err := os.MkdirAll(o.Data, 0o700); err != nil {
			return err
		}
		p2p.WriteHTTPAddr(o.Data, addr)
		p2p.WriteReady(o.Data)
		defer p2p.RemoveRunFiles(o.Data)
	}
	if o.Logger != nil {
		o.Logger.Info("synthetic engine up", "addr", addr, "models", o.Config.Models, "rate", o.Config.Rate)
	}
	if bound != nil {
		bound(addr)
	}
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	case err := <-errc:
		return err
	}
}

// setIf sets *dst to v when v is not zero.
func setIf[T comparable](dst *T, v T) {
	var zero T
	if v != zero {
		*dst = v
	}
}
