package launch

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/nodecore/provider"
)

// MeshOptions describe a whole local mesh on 127.0.0.1.
type MeshOptions struct {
	Dir         string   // every role's data directory lives below it
	Nodes       int      // nodes, each with its own synthetic engine
	Models      []string // models every synthetic engine serves
	Rate        float64  // synthetic engine speed in tok/s (0 = as fast as it can)
	FailRate    []float64
	GatewayAddr string        // HOST:PORT for the gateway's HTTP API
	SettleAddr  string        // HOST:PORT for the settlement peer's HTTP API
	Capacity    int           // per node; 0 = the node default
	RampStart   float64       // settlement's ramp-up start (0 = the default 10%)
	ClaimGrace  time.Duration // how long node claims wait for receipts (0 = the default 2m)
	ProbeEvery  time.Duration // settlement's probe interval (0 = the default)
	ProbeRotate time.Duration // how long the prober keeps one identity (0 = the default)
	Logger      *slog.Logger  // nil = discard
	ReadyWait   time.Duration // how long to wait for each role
	OperatorKey string        // reuse this account for the nodes if the ledger knows it
	DemoKey     string        // reuse this consumer account if the ledger knows it
	// Gateway, when set, adjusts the gateway's options (tests use it).
	Gateway func(*GatewayOptions)
	// Engine, when set, adjusts node i's synthetic engine (tests use it).
	Engine func(i int, c *engine.SyntheticConfig)
	// Node, when set, adjusts node i's configuration (tests use it).
	Node func(i int, c *provider.Config)
}

// Mesh is a running local mesh.
type Mesh struct {
	Dir           string
	BootstrapAddr string // the bootstrap peer's first multiaddr
	PlatformID    string // the settlement peer's id
	SettleURL     string // http://host:port of the settlement peer
	GatewayURL    string // http://host:port of the gateway
	NodeIDs       []string
	EngineURLs    []string
	OperatorKey   string // API key of the account the nodes earn for
	OperatorID    string
	DemoKey       string // API key of a consumer account
	DemoID        string

	cancel   context.CancelFunc
	gwCancel context.CancelFunc // the gateway stops first, so its receipts reach a settlement peer still up
	gwDone   chan struct{}
	wg       sync.WaitGroup
	errMu    sync.Mutex
	errs     []error
}

// AccountResponse is POST /v1/accounts's answer.
type AccountResponse struct {
	Account    string `json:"account"`
	APIKey     string `json:"api_key"`
	BalanceUcr int64  `json:"balance_ucr"`
}

// StartMesh starts bootstrap, settlement, engines, nodes and a gateway in
// this process, creates an operator and a demo account, and returns once
// the gateway sees every node.
func StartMesh(parent context.Context, o MeshOptions) (*Mesh, error) {
	if o.Nodes < 1 {
		return nil, errors.New("a mesh needs at least one node")
	}
	if len(o.Models) == 0 {
		o.Models = []string{"synthetic-1"}
	}
	if o.ReadyWait <= 0 {
		o.ReadyWait = 30 * time.Second
	}
	if o.SettleAddr == "" {
		o.SettleAddr = "127.0.0.1:0"
	}
	if o.GatewayAddr == "" {
		o.GatewayAddr = "127.0.0.1:0"
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(parent)
	m := &Mesh{Dir: o.Dir, cancel: cancel}
	fail := func(err error) (*Mesh, error) {
		m.Stop()
		return nil, err
	}
	loopback := []string{"/ip4/127.0.0.1/tcp/0"}

	bdir := filepath.Join(o.Dir, "bootstrap")
	m.run("bootstrap", func() error {
		return Bootstrap(ctx, Common{Data: bdir, Listen: loopback, Logger: log.With("role", "bootstrap")})
	})
	if err := m.waitReady(bdir, o.ReadyWait); err != nil {
		return fail(err)
	}
	addrs, err := ReadLines(filepath.Join(bdir, "addrs"))
	if err != nil || len(addrs) == 0 {
		return fail(fmt.Errorf("bootstrap addrs: %v", err))
	}
	m.BootstrapAddr = addrs[0]
	boot := []string{m.BootstrapAddr}

	sdir := filepath.Join(o.Dir, "settle")
	m.run("settle", func() error {
		return Settle(ctx, SettleOptions{
			Common: Common{Data: sdir, Listen: loopback, Bootstrap: boot, Logger: log.With("role", "settle")},
			HTTP:   o.SettleAddr, SignupLimit: 0, RampStart: o.RampStart, ClaimGrace: o.ClaimGrace,
			ProbeEvery: o.ProbeEvery, ProbeRotate: o.ProbeRotate,
			CloudAllowPrivate: true, // the dev mesh's engines are local: hosted nodes may call them
		})
	})
	if err := m.waitReady(sdir, o.ReadyWait); err != nil {
		return fail(err)
	}
	if m.PlatformID, err = ReadFirstLine(filepath.Join(sdir, "peer-id")); err != nil {
		return fail(err)
	}
	settleHTTP, err := ReadFirstLine(filepath.Join(sdir, "http-addr"))
	if err != nil {
		return fail(err)
	}
	m.SettleURL = "http://" + settleHTTP

	op, err := reuseOrCreate(ctx, m.SettleURL, o.OperatorKey)
	if err != nil {
		return fail(err)
	}
	m.OperatorKey, m.OperatorID = op.APIKey, op.Account
	demo, err := reuseOrCreate(ctx, m.SettleURL, o.DemoKey)
	if err != nil {
		return fail(err)
	}
	m.DemoKey, m.DemoID = demo.APIKey, demo.Account

	for i := range o.Nodes {
		cfg := engine.DefaultSyntheticConfig()
		cfg.Models, cfg.Rate, cfg.Seed = o.Models, o.Rate, int64(i+1)
		if i < len(o.FailRate) {
			cfg.FailRate = o.FailRate[i]
		}
		if o.Engine != nil {
			o.Engine(i, &cfg)
		}
		bound := make(chan string, 1)
		name := fmt.Sprintf("engine-%d", i+1)
		m.run(name, func() error {
			return Engine(ctx, EngineOptions{Listen: "127.0.0.1:0", Config: cfg, Logger: log.With("role", name)},
				func(a string) { bound <- a })
		})
		var engineAddr string
		select {
		case engineAddr = <-bound:
		case <-time.After(o.ReadyWait):
			return fail(fmt.Errorf("%s did not start: %v", name, m.Err()))
		}
		m.EngineURLs = append(m.EngineURLs, "http://"+engineAddr+"/v1")
		ndir := filepath.Join(o.Dir, fmt.Sprintf("node-%d", i+1))
		nname := fmt.Sprintf("node-%d", i+1)
		m.run(nname, func() error {
			return Node(ctx, NodeOptions{
				Common:   Common{Data: ndir, Listen: loopback, Bootstrap: boot, Logger: log.With("role", nname)},
				Platform: m.PlatformID, Upstream: "http://" + engineAddr + "/v1",
				AccountKey: m.OperatorKey, Capacity: o.Capacity, Synthetic: true,
				Tune: func(c *provider.Config) {
					if o.Node != nil {
						o.Node(i, c)
					}
				},
			})
		})
	}
	for i := range o.Nodes {
		ndir := filepath.Join(o.Dir, fmt.Sprintf("node-%d", i+1))
		if err := m.waitReady(ndir, o.ReadyWait); err != nil {
			return fail(err)
		}
		id, err := ReadFirstLine(filepath.Join(ndir, "peer-id"))
		if err != nil {
			return fail(err)
		}
		m.NodeIDs = append(m.NodeIDs, id)
	}

	gdir := filepath.Join(o.Dir, "gateway")
	gwCtx, gwCancel := context.WithCancel(ctx)
	m.gwCancel, m.gwDone = gwCancel, make(chan struct{})
	m.run("gateway", func() error {
		defer close(m.gwDone)
		gopts := GatewayOptions{
			Common:   Common{Data: gdir, Listen: loopback, Bootstrap: boot, Logger: log.With("role", "gateway")},
			Platform: m.PlatformID, HTTP: o.GatewayAddr,
		}
		if o.Gateway != nil {
			o.Gateway(&gopts)
		}
		return Gateway(gwCtx, gopts)
	})
	if err := m.waitReady(gdir, o.ReadyWait); err != nil {
		return fail(err)
	}
	gwHTTP, err := ReadFirstLine(filepath.Join(gdir, "http-addr"))
	if err != nil {
		return fail(err)
	}
	m.GatewayURL = "http://" + gwHTTP
	if err := WaitInstances(ctx, m.GatewayURL, m.DemoKey, o.Nodes*len(o.Models), o.ReadyWait); err != nil {
		return fail(err)
	}
	return m, nil
}

func (m *Mesh) run(name string, f func() error) {
	m.wg.Go(func() {
		if err := f(); err != nil && !errors.Is(err, context.Canceled) {
			m.errMu.Lock()
			m.errs = append(m.errs, fmt.Errorf("%s: %w", name, err))
			m.errMu.Unlock()
		}
	})
}

// Err returns the errors roles stopped with, if any.
func (m *Mesh) Err() error {
	m.errMu.Lock()
	defer m.errMu.Unlock()
	return errors.Join(m.errs...)
}

func (m *Mesh) waitReady(dir string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
			return nil
		}
		if err := m.Err(); err != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s: %v", dir, d, m.Err())
}

// Stop stops every role and waits for them; it returns what they failed with.
func (m *Mesh) Stop() error {
	if m.gwCancel != nil {
		m.gwCancel()
		<-m.gwDone
	}
	m.cancel()
	m.wg.Wait()
	return m.Err()
}

// Wait blocks until every role has stopped.
func (m *Mesh) Wait() { m.wg.Wait() }

// ReadFirstLine returns a file's first line, trimmed.
func ReadFirstLine(path string) (string, error) {
	lines, err := ReadLines(path)
	if err != nil {
		return "", err
	}
	if len(lines) == 0 {
		return "", fmt.Errorf("%s is empty", path)
	}
	return lines[0], nil
}

// ReadLines returns a file's non-empty lines.
func ReadLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out, sc.Err()
}

// CreateAccount calls POST /v1/accounts on a settlement peer.
func CreateAccount(ctx context.Context, settleURL string) (*AccountResponse, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, settleURL+"/v1/accounts", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("create account: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return nil, fmt.Errorf("create account: status %s", resp.Status)
	}
	var a AccountResponse
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		return nil, fmt.Errorf("create account: %w", err)
	}
	return &a, nil
}

// reuseOrCreate returns the account of key if the settlement peer knows it,
// else a new account.
func reuseOrCreate(ctx context.Context, settleURL, key string) (*AccountResponse, error) {
	if key != "" {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, settleURL+"/v1/account", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			var a AccountResponse
			ok := resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&a) == nil
			resp.Body.Close()
			if ok {
				a.APIKey = key
				return &a, nil
			}
		}
	}
	return CreateAccount(ctx, settleURL)
}

// WaitInstances polls the gateway's /v1/models until it lists at least n
// live instances in all.
func WaitInstances(ctx context.Context, gatewayURL, key string, n int, d time.Duration) error {
	deadline := time.Now().Add(d)
	seen := 0
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, gatewayURL+"/v1/models", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			var list struct {
				Data []struct {
					Instances []json.RawMessage `json:"instances"`
				} `json:"data"`
			}
			json.NewDecoder(resp.Body).Decode(&list)
			resp.Body.Close()
			seen = 0
			for _, m := range list.Data {
				seen += len(m.Instances)
			}
			if seen >= n {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("gateway sees %d of %d instances after %s", seen, n, d)
}
