package settlement

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// fixture is a running settlement peer (real libp2p host, real Pebble ledger,
// real HTTP) and two other peers, a gateway and a node, that reach it over
// /tokenrouter/settle/1.
type fixture struct {
	s      *Settlement
	led    *ledger.Ledger
	settle *p2p.Host
	gw     *p2p.Host
	node   *p2p.Host
	srv    *httptest.Server
	prices economy.PriceTable
	keys   map[string]string // account -> an API key the fixture's gateway may present
}

func newHost(t *testing.T, bootstrap ...string) *p2p.Host {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := p2p.NewHost(ctx, p2p.Config{
		DataDir:   t.TempDir(),
		Listen:    []string{"/ip4/127.0.0.1/tcp/0"},
		Bootstrap: bootstrap,
	})
	if err != nil {
		t.Fatalf("NewHost: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func newFixture(t *testing.T, tweak func(*Config)) *fixture {
	t.Helper()
	settleHost := newHost(t)
	led, err := ledger.Open(t.TempDir(), ledger.Options{})
	if err != nil {
		t.Fatalf("ledger.Open: %v", err)
	}
	t.Cleanup(func() { led.Close() })

	cfg := DefaultConfig()
	cfg.Host = settleHost
	cfg.Ledger = led
	cfg.SignupLimit = 2
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, func(string) { close(ready) }) }()
	// Registered after the ledger's Close, so it runs before it.
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run returned early: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("settlement peer never became ready")
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)

	boot := settleHost.FullAddrs()[0]
	f := &fixture{s: s, led: led, settle: settleHost, gw: newHost(t, boot), node: newHost(t, boot), srv: srv, prices: cfg.Prices}
	checkInvariants(t, led)
	return f
}

// checkInvariants asserts the ledger's books balance: every balance sums to
// zero and only mint is negative.
func checkInvariants(t *testing.T, led *ledger.Ledger) {
	t.Helper()
	bal, err := led.Balances()
	if err != nil {
		t.Fatalf("Balances: %v", err)
	}
	var sum int64
	for id, b := range bal {
		if b < 0 && id != ledger.AccountMint {
			t.Errorf("account %q has a negative balance %d", id, b)
		}
		sum += b
	}
	if sum != 0 {
		t.Fatalf("balances sum to %d, want 0: %v", sum, bal)
	}
}

func (f *fixture) balances(t *testing.T) map[string]int64 {
	t.Helper()
	bal, err := f.led.Balances()
	if err != nil {
		t.Fatal(err)
	}
	return bal
}

func (f *fixture) account(t *testing.T, id string) ledger.AccountState {
	t.Helper()
	a, err := f.led.Account(id)
	if err != nil {
		t.Fatalf("Account(%q): %v", id, err)
	}
	return a
}

type signupResp struct {
	APIKey string `json:"api_key"`
	p2p.AccountInfo
}

type openAIError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

// decodeOpenAIError checks body is OpenAI's error shape and returns it.
func decodeOpenAIError(t *testing.T, body []byte) openAIError {
	t.Helper()
	var raw map[string]map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatalf("error body %q is not JSON: %v", body, err)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := raw["error"][k]; !ok {
			t.Errorf("error body %s lacks error.%s", body, k)
		}
	}
	var e openAIError
	json.Unmarshal(body, &e)
	if e.Error.Message == "" || e.Error.Type == "" {
		t.Errorf("error body %s has an empty message or type", body)
	}
	return e
}

func (f *fixture) post(t *testing.T, path string) (int, []byte) {
	t.Helper()
	resp, err := http.Post(f.srv.URL+path, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

func (f *fixture) get(t *testing.T, path, key string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, f.srv.URL+path, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// signup creates an account over HTTP and returns its API key and id.
func (f *fixture) signup(t *testing.T) (key, account string) {
	t.Helper()
	code, body := f.post(t, "/v1/accounts")
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/accounts = %d %s", code, body)
	}
	var r signupResp
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, f.led)
	if f.keys == nil {
		f.keys = map[string]string{}
	}
	f.keys[r.Account] = r.APIKey
	return r.APIKey, r.Account
}

// grant has gw present the account's API key to settlement, as a gateway
// does before its first call, and returns the grant settlement signs.
func (f *fixture) grant(t *testing.T, gw *p2p.Host, account string) *p2p.Grant {
	t.Helper()
	key, ok := f.keys[account]
	if !ok {
		return nil // the gateway never held a key of this account
	}
	resp, err := f.call(t, gw, &p2p.SettleRequest{Op: p2p.OpAccount, APIKey: key})
	if err != nil || resp.Grant == nil {
		t.Fatalf("auth for a grant: %v", err)
	}
	return resp.Grant
}

func (f *fixture) call(t *testing.T, from *p2p.Host, req *p2p.SettleRequest) (*p2p.SettleResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return from.CallSettle(ctx, f.settle.ID(), req)
}

// register links the fixture's node to the account of apiKey.
func (f *fixture) register(t *testing.T, apiKey string) {
	t.Helper()
	reg := &p2p.NodeRegistration{Node: f.node.ID().String(), APIKey: apiKey, TimeMs: time.Now().UnixMilli()}
	if err := reg.Sign(f.node.Key); err != nil {
		t.Fatal(err)
	}
	if _, err := f.call(t, f.node, &p2p.SettleRequest{Op: p2p.OpRegister, Register: reg}); err != nil {
		t.Fatalf("register node: %v", err)
	}
}

// receipt builds a receipt for a call of llama-3-8b the fixture's node
// served through its gateway (see receiptFor).
func (f *fixture) receipt(t *testing.T, consumer, reqID string, prompt, completion int64) *p2p.Receipt {
	t.Helper()
	return f.receiptFor(t, "llama-3-8b", consumer, reqID, prompt, completion)
}

// receiptFor builds a receipt for a call of model the fixture's node served
// through its gateway: the claim signed by the node's key, the receipt by
// the gateway's, priced from the settlement peer's table, with the grant
// the gateway gets by presenting the consumer's key.
func (f *fixture) receiptFor(t *testing.T, model, consumer, reqID string, prompt, completion int64) *p2p.Receipt {
	t.Helper()
	claim := p2p.NodeClaim{
		RequestID: reqID, Model: model, Node: f.node.ID().String(), Gateway: f.gw.ID().String(),
		PromptTokens: prompt, CompletionTokens: completion,
	}
	sig := claimMAC(t, f.node.Key, f.settle.ID(), claim)
	price := f.prices.For(model)
	r := &p2p.Receipt{
		RequestID: reqID, Model: model, Consumer: consumer, Node: claim.Node, Gateway: claim.Gateway,
		PromptTokens: prompt, CompletionTokens: completion,
		Price: price, CostUcr: economy.Cost(price, prompt, completion),
		TimeMs: time.Now().UnixMilli(), Claim: claim, NodeMAC: sig, Grant: f.grant(t, f.gw, consumer),
	}
	if err := r.Sign(f.gw.Key); err != nil {
		t.Fatal(err)
	}
	return r
}

// claimMAC is the MAC the node with nodeKey gives claim for platform.
func claimMAC(t *testing.T, nodeKey crypto.PrivKey, platform peer.ID, claim p2p.NodeClaim) []byte {
	t.Helper()
	node, err := peer.IDFromPrivateKey(nodeKey)
	if err != nil {
		t.Fatal(err)
	}
	a, err := p2p.NewClaimAuth(nodeKey, platform, node, platform)
	if err != nil {
		t.Fatal(err)
	}
	return a.MAC(claim)
}

func (f *fixture) send(t *testing.T, from *p2p.Host, r *p2p.Receipt) (*p2p.SettleResponse, error) {
	t.Helper()
	resp, err := f.call(t, from, &p2p.SettleRequest{Op: p2p.OpReceipt, Receipt: r})
	checkInvariants(t, f.led)
	return resp, err
}

func wantRPCCode(t *testing.T, err error, code string) {
	t.Helper()
	var rpcErr *p2p.RPCError
	if !errors.As(err, &rpcErr) {
		t.Fatalf("err = %v (%T), want *p2p.RPCError %q", err, err, code)
	}
	if rpcErr.Code != code {
		t.Fatalf("code = %q (%s), want %q", rpcErr.Code, rpcErr.Message, code)
	}
}

func wantUnchanged(t *testing.T, before, after map[string]int64) {
	t.Helper()
	if !maps.Equal(before, after) {
		t.Fatalf("balances moved:\nbefore %v\nafter  %v", before, after)
	}
}

func TestHTTPAccounts(t *testing.T) {
	f := newFixture(t, nil)

	code, body := f.post(t, "/v1/accounts")
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/accounts = %d %s", code, body)
	}
	var r signupResp
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(r.APIKey, "trk_") || len(r.APIKey) < len("trk_")+40 {
		t.Errorf("api_key = %q, want trk_ and 32 random bytes", r.APIKey)
	}
	if r.Account == "" || r.BalanceUcr != 5_000_000 || r.StartingCredit != 5_000_000 {
		t.Errorf("signup = %s", body)
	}
	checkInvariants(t, f.led)
	if bal := f.balances(t); bal[ledger.AccountMint] != -5_000_000 {
		t.Errorf("mint = %d, want -5000000", bal[ledger.AccountMint])
	}

	f.signup(t) // the second from this address is fine
	code, body = f.post(t, "/v1/accounts")
	if code != http.StatusTooManyRequests {
		t.Fatalf("third signup = %d %s, want 429", code, body)
	}
	if e := decodeOpenAIError(t, body); e.Error.Code == nil || *e.Error.Code == "" {
		t.Errorf("429 body %s has no code", body)
	}
	if n := len(f.balances(t)); n != 5 { // mint, platform, bounty_pool and two accounts
		t.Errorf("%d accounts after a refused signup, want 5", n)
	}
	checkInvariants(t, f.led)

	code, body = f.get(t, "/v1/account", r.APIKey)
	if code != http.StatusOK {
		t.Fatalf("GET /v1/account = %d %s", code, body)
	}
	var got p2p.AccountInfo
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	if got.Account != r.Account || got.BalanceUcr != 5_000_000 || got.StartingCredit != 5_000_000 || got.Calls != 0 {
		t.Errorf("GET /v1/account = %s, want account %s", body, r.Account)
	}
	if got.Balance == "" {
		t.Errorf("GET /v1/account has no display balance: %s", body)
	}

	for _, key := range []string{"trk_nope", ""} {
		code, body = f.get(t, "/v1/account", key)
		if code != http.StatusUnauthorized {
			t.Fatalf("GET /v1/account with key %q = %d %s, want 401", key, code, body)
		}
		decodeOpenAIError(t, body)
	}

	code, body = f.get(t, "/healthz", "")
	if code != http.StatusOK || !strings.Contains(string(body), "ok") {
		t.Errorf("GET /healthz = %d %s", code, body)
	}
	code, body = f.get(t, "/no/such/thing", "")
	if code != http.StatusNotFound {
		t.Errorf("GET /no/such/thing = %d", code)
	}
	decodeOpenAIError(t, body)
}

func TestReceiptSettles(t *testing.T) {
	f := newFixture(t, nil)
	consumerKey, consumer := f.signup(t)
	operatorKey, operator := f.signup(t)
	f.register(t, operatorKey)
	if acct, ok := f.led.NodeAccount(f.node.ID().String()); !ok || acct != operator {
		t.Fatalf("node linked to %q (%v), want %q", acct, ok, operator)
	}

	// The account op answers the gateway's key check.
	resp, err := f.call(t, f.gw, &p2p.SettleRequest{Op: p2p.OpAuth, APIKey: consumerKey})
	if err != nil || resp.Account == nil || resp.Account.Account != consumer {
		t.Fatalf("auth: %+v %v", resp, err)
	}
	resp, err = f.call(t, f.gw, &p2p.SettleRequest{Op: p2p.OpPrices})
	if err != nil || resp.Prices == nil || resp.Prices.Default != f.prices.Default {
		t.Fatalf("prices: %+v %v", resp, err)
	}

	// 1234 in at 1 credit/1M + 567 out at 2 credits/1M = 2368 µcr, 80% of it 1894.4.
	r := f.receipt(t, consumer, "req-1", 1234, 567)
	if r.CostUcr != 2368 {
		t.Fatalf("test premise: cost = %d, want 2368", r.CostUcr)
	}
	before := f.balances(t)
	resp, err = f.send(t, f.gw, r)
	if err != nil {
		t.Fatalf("receipt: %v", err)
	}
	if !resp.Applied {
		t.Fatal("receipt not applied")
	}
	after := f.balances(t)
	const cost, provider, platform = 2368, 1894, 474
	if d := before[consumer] - after[consumer]; d != cost {
		t.Errorf("consumer paid %d, want %d", d, cost)
	}
	if d := after[operator] - before[operator]; d != provider {
		t.Errorf("operator earned %d, want %d (80%% floor)", d, provider)
	}
	// The platform's share: what it keeps plus what it moved into the bounty pool.
	if d := after[ledger.AccountPlatform] + after[ledger.AccountBountyPool] - before[ledger.AccountPlatform] - before[ledger.AccountBountyPool]; d != platform {
		t.Errorf("platform got %d, want %d", d, platform)
	}
	if c := f.account(t, consumer); c.Spent != cost || c.Calls != 1 {
		t.Errorf("consumer spent %d calls %d, want %d and 1", c.Spent, c.Calls, cost)
	}
	if o := f.account(t, operator); o.Earned != provider {
		t.Errorf("operator earned counter %d, want %d", o.Earned, provider)
	}
	if _, err := f.led.Account(ledger.NodeAccountPrefix + f.node.ID().String()); err == nil {
		t.Error("a linked node's share also went to a node: account")
	}

	// The same receipt again: applied once.
	resp, err = f.send(t, f.gw, r)
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	if resp.Applied {
		t.Error("a replayed receipt was applied again")
	}
	wantUnchanged(t, after, f.balances(t))
	if c := f.account(t, consumer); c.Calls != 1 {
		t.Errorf("calls = %d after a replay, want 1", c.Calls)
	}

	// Same request id, different tokens: a conflict.
	other := f.receipt(t, consumer, "req-1", 1234, 568)
	_, err = f.send(t, f.gw, other)
	wantRPCCode(t, err, p2p.CodeConflict)
	wantUnchanged(t, after, f.balances(t))

	// A second call settles on top.
	r2 := f.receipt(t, consumer, "req-2", 10, 10)
	if resp, err := f.send(t, f.gw, r2); err != nil || !resp.Applied {
		t.Fatalf("second receipt: %+v %v", resp, err)
	}
	if got := f.balances(t)[consumer]; got != 5_000_000-cost-r2.CostUcr {
		t.Errorf("consumer balance %d, want %d", got, 5_000_000-cost-r2.CostUcr)
	}

	// GET /v1/account shows what settled.
	code, body := f.get(t, "/v1/account", consumerKey)
	var info p2p.AccountInfo
	if code != http.StatusOK || json.Unmarshal(body, &info) != nil {
		t.Fatalf("GET /v1/account = %d %s", code, body)
	}
	if info.Calls != 2 || info.SpentUcr != cost+r2.CostUcr || info.BalanceUcr != 5_000_000-cost-r2.CostUcr {
		t.Errorf("GET /v1/account = %s", body)
	}

	code, body = f.get(t, "/metrics", "")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d", code)
	}
	for _, want := range []string{
		"tokenrouter_settle_receipts_total",
		`tokenrouter_settle_receipts_total{outcome="applied"} 2`,
		`tokenrouter_settle_receipts_total{outcome="duplicate"} 1`,
		`tokenrouter_settle_receipts_total{outcome="rejected"} 1`,
		"tokenrouter_settle_accounts_created_total 2",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestReceiptRejections(t *testing.T) {
	f := newFixture(t, nil)
	_, consumer := f.signup(t)
	otherKey, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		// build returns the receipt and the host that sends it.
		build func() (*p2p.Receipt, *p2p.Host)
	}{
		{"sent by a host other than the gateway named", func() (*p2p.Receipt, *p2p.Host) {
			return f.receipt(t, consumer, "r-sender", 100, 100), f.node
		}},
		{"forged node MAC", func() (*p2p.Receipt, *p2p.Host) {
			r := f.receipt(t, consumer, "r-nodesig", 100, 100)
			r.NodeMAC = claimMAC(t, otherKey, f.settle.ID(), r.Claim)
			r.Sign(f.gw.Key)
			return r, f.gw
		}},
		{"gateway signature by another key", func() (*p2p.Receipt, *p2p.Host) {
			r := f.receipt(t, consumer, "r-gwsig", 100, 100)
			r.Sign(otherKey)
			return r, f.gw
		}},
		{"billed tokens above the claim", func() (*p2p.Receipt, *p2p.Host) {
			r := f.receipt(t, consumer, "r-above", 100, 100)
			r.CompletionTokens = 200
			r.CostUcr = economy.Cost(r.Price, r.PromptTokens, r.CompletionTokens)
			r.Sign(f.gw.Key)
			return r, f.gw
		}},
		{"wrong price", func() (*p2p.Receipt, *p2p.Host) {
			r := f.receipt(t, consumer, "r-price", 100, 100)
			r.Price = economy.Price{InputPer1M: 1, OutputPer1M: 1}
			r.CostUcr = economy.Cost(r.Price, r.PromptTokens, r.CompletionTokens)
			r.Sign(f.gw.Key)
			return r, f.gw
		}},
		{"wrong cost", func() (*p2p.Receipt, *p2p.Host) {
			r := f.receipt(t, consumer, "r-cost", 100, 100)
			r.CostUcr--
			r.Sign(f.gw.Key)
			return r, f.gw
		}},
		{"unknown consumer", func() (*p2p.Receipt, *p2p.Host) {
			return f.receipt(t, "acct_00000000deadbeef", "r-consumer", 100, 100), f.gw
		}},
		{"no request id", func() (*p2p.Receipt, *p2p.Host) {
			return f.receipt(t, consumer, "", 100, 100), f.gw
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, from := tc.build()
			before := f.balances(t)
			resp, err := f.send(t, from, r)
			wantRPCCode(t, err, p2p.CodeInvalid)
			if resp.Applied {
				t.Error("a rejected receipt says applied")
			}
			wantUnchanged(t, before, f.balances(t))
			if c := f.account(t, consumer); c.Calls != 0 || c.Spent != 0 {
				t.Errorf("consumer calls %d spent %d after a rejection", c.Calls, c.Spent)
			}
		})
	}

	// A rejected receipt does not burn its request id: the genuine one still settles.
	r := f.receipt(t, consumer, "r-sender", 100, 100)
	if resp, err := f.send(t, f.gw, r); err != nil || !resp.Applied {
		t.Fatalf("genuine receipt after rejections: %+v %v", resp, err)
	}

	// No receipt at all.
	_, err = f.call(t, f.gw, &p2p.SettleRequest{Op: p2p.OpReceipt})
	wantRPCCode(t, err, p2p.CodeInvalid)
	_, err = f.call(t, f.gw, &p2p.SettleRequest{Op: "nonsense"})
	wantRPCCode(t, err, p2p.CodeInvalid)
}

// TestReceiptSystemAccountConsumer: a receipt naming a system account as the
// consumer must be refused as invalid and move nothing. mint may go
// negative, so charging it would let any gateway and node print money; the
// bounty pool is platform money; the platform paying itself is nonsense.
func TestReceiptSystemAccountConsumer(t *testing.T) {
	f := newFixture(t, nil)
	// Fund the bounty pool so charging it would show.
	if _, err := f.led.Post(ledger.Posting{Key: "fund-pool", Payload: []byte("fund"), Transfers: []ledger.Transfer{
		{From: ledger.AccountMint, To: ledger.AccountBountyPool, Amount: 10_000_000, Kind: ledger.KindGrant},
	}}); err != nil {
		t.Fatal(err)
	}
	for _, sys := range []string{ledger.AccountMint, ledger.AccountBountyPool, ledger.AccountPlatform} {
		t.Run(sys, func(t *testing.T) {
			before := f.balances(t)
			_, err := f.send(t, f.gw, f.receipt(t, sys, "sys-"+sys, 1_000_000, 1_000_000))
			wantRPCCode(t, err, p2p.CodeInvalid)
			wantUnchanged(t, before, f.balances(t))
		})
	}
}

// TestReceiptNeedsAGrant: a receipt only charges an account whose API key
// the sending gateway presented (settlement signed it a grant), for calls
// made before that grant expired. Gateways are run by consumers (SPEC §1).
func TestReceiptNeedsAGrant(t *testing.T) {
	f := newFixture(t, nil)
	_, victim := f.signup(t)
	victimKey := f.keys[victim]
	delete(f.keys, victim) // the fixture's gateway never saw the victim's key
	before := f.balances(t)
	_, err := f.send(t, f.gw, f.receipt(t, victim, "theft", 1_000_000, 1_000_000))
	wantRPCCode(t, err, p2p.CodeInvalid)
	wantUnchanged(t, before, f.balances(t))

	// A grant made out to another gateway does not transfer.
	other := newHost(t, f.settle.FullAddrs()[0])
	f.keys[victim] = victimKey
	theirs := f.grant(t, other, victim)
	r := f.receipt(t, victim, "borrowed-grant", 1000, 1000)
	r.Grant = theirs
	if err := r.Sign(f.gw.Key); err != nil {
		t.Fatal(err)
	}
	_, err = f.send(t, f.gw, r)
	wantRPCCode(t, err, p2p.CodeInvalid)

	// A forged grant (signed by anyone but settlement) does not either.
	forged := *f.grant(t, f.gw, victim)
	if err := forged.Sign(f.gw.Key); err != nil {
		t.Fatal(err)
	}
	r = f.receipt(t, victim, "forged-grant", 1000, 1000)
	r.Grant = &forged
	r.Sign(f.gw.Key)
	_, err = f.send(t, f.gw, r)
	wantRPCCode(t, err, p2p.CodeInvalid)

	// A call after the grant expired is refused.
	r = f.receipt(t, victim, "late", 1000, 1000)
	r.TimeMs = r.Grant.ExpiresMs + 1
	r.Sign(f.gw.Key)
	_, err = f.send(t, f.gw, r)
	wantRPCCode(t, err, p2p.CodeInvalid)
	wantUnchanged(t, before, f.balances(t))

	// With its own grant the same gateway's receipt settles.
	resp, err := f.send(t, f.gw, f.receipt(t, victim, "honest", 1000, 1000))
	if err != nil || !resp.Applied {
		t.Fatalf("a granted receipt: %v", err)
	}
}

func TestReceiptConcurrentReplays(t *testing.T) {
	f := newFixture(t, nil)
	_, consumer := f.signup(t)
	r := f.receipt(t, consumer, "req-race", 1000, 1000)
	const n = 8
	results := make(chan bool, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := f.gw.CallSettle(ctx, f.settle.ID(), &p2p.SettleRequest{Op: p2p.OpReceipt, Receipt: r})
			errs <- err
			results <- err == nil && resp.Applied
		}()
	}
	applied := 0
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("concurrent send: %v", err)
		}
		if <-results {
			applied++
		}
	}
	if applied != 1 {
		t.Fatalf("%d of %d concurrent sends applied, want exactly 1", applied, n)
	}
	checkInvariants(t, f.led)
	if got := f.balances(t)[consumer]; got != 5_000_000-r.CostUcr {
		t.Errorf("consumer = %d, want %d", got, 5_000_000-r.CostUcr)
	}
}

// TestReceiptOwnNode: an operator calling through its own node pays only the
// platform's share.
func TestReceiptOwnNode(t *testing.T) {
	f := newFixture(t, nil)
	key, acct := f.signup(t)
	f.register(t, key)
	r := f.receipt(t, acct, "req-own", 1000, 1000) // 3000 µcr: 2400 provider, 600 platform
	if resp, err := f.send(t, f.gw, r); err != nil || !resp.Applied {
		t.Fatalf("receipt: %+v %v", resp, err)
	}
	bal := f.balances(t)
	if bal[acct] != 5_000_000-600 || bal[ledger.AccountPlatform]+bal[ledger.AccountBountyPool] != 600 {
		t.Errorf("own-node call: account %d platform %d + pool %d, want %d and 600", bal[acct], bal[ledger.AccountPlatform], bal[ledger.AccountBountyPool], 5_000_000-600)
	}
}

func TestReceiptUnregisteredNode(t *testing.T) {
	f := newFixture(t, nil)
	_, consumer := f.signup(t)
	r := f.receipt(t, consumer, "req-unreg", 1000, 1000) // 1000 + 2000 = 3000 µcr
	resp, err := f.send(t, f.gw, r)
	if err != nil || !resp.Applied {
		t.Fatalf("receipt: %+v %v", resp, err)
	}
	nodeAcct := ledger.NodeAccountPrefix + f.node.ID().String()
	bal := f.balances(t)
	if bal[nodeAcct] != 2400 {
		t.Errorf("%s = %d, want 2400", nodeAcct, bal[nodeAcct])
	}
	if bal[ledger.AccountPlatform]+bal[ledger.AccountBountyPool] != 600 {
		t.Errorf("platform + pool = %d, want 600", bal[ledger.AccountPlatform]+bal[ledger.AccountBountyPool])
	}
	if bal[consumer] != 5_000_000-3000 {
		t.Errorf("consumer = %d, want %d", bal[consumer], 5_000_000-3000)
	}
}

func TestReceiptCappedAtBalance(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Prices = economy.PriceTable{Default: economy.Price{InputPer1M: 1e12, OutputPer1M: 1e12}}
	})
	_, consumer := f.signup(t)
	operatorKey, operator := f.signup(t)
	f.register(t, operatorKey)

	r := f.receipt(t, consumer, "req-big", 3, 4) // 7e12 * 1e0 / 1e6 = 7,000,000 µcr
	if r.CostUcr != 7_000_000 {
		t.Fatalf("test premise: cost = %d", r.CostUcr)
	}
	resp, err := f.send(t, f.gw, r)
	if err != nil || !resp.Applied {
		t.Fatalf("receipt: %+v %v", resp, err)
	}
	bal := f.balances(t)
	if bal[consumer] != 0 {
		t.Errorf("consumer balance = %d, want 0 (charged what it had)", bal[consumer])
	}
	if bal[operator] != 5_000_000+4_000_000 {
		t.Errorf("operator = %d, want %d (its grant plus 80%% of 5 credits)", bal[operator], 9_000_000)
	}
	if bal[ledger.AccountPlatform]+bal[ledger.AccountBountyPool] != 1_000_000 {
		t.Errorf("platform + pool = %d, want 1000000", bal[ledger.AccountPlatform]+bal[ledger.AccountBountyPool])
	}
	if c := f.account(t, consumer); c.Spent != 5_000_000 || c.Calls != 1 {
		t.Errorf("consumer spent %d calls %d, want 5000000 and 1", c.Spent, c.Calls)
	}

	// The capped receipt is still applied once.
	resp, err = f.send(t, f.gw, r)
	if err != nil || resp.Applied {
		t.Fatalf("replay of a capped receipt: %+v %v", resp, err)
	}
	wantUnchanged(t, bal, f.balances(t))

	// An empty account is charged nothing more and never goes negative.
	if _, err := f.send(t, f.gw, f.receipt(t, consumer, "req-big-2", 3, 4)); err != nil {
		t.Fatalf("receipt on an empty account: %v", err)
	}
	if got := f.balances(t)[consumer]; got != 0 {
		t.Errorf("empty consumer balance = %d, want 0", got)
	}
}

func TestRegisterNode(t *testing.T) {
	f := newFixture(t, nil)
	key, account := f.signup(t)
	nodeID := f.node.ID().String()
	otherKey, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	reg := func(signer crypto.PrivKey, apiKey string, at time.Time) *p2p.NodeRegistration {
		r := &p2p.NodeRegistration{Node: nodeID, APIKey: apiKey, TimeMs: at.UnixMilli()}
		if err := r.Sign(signer); err != nil {
			t.Fatal(err)
		}
		return r
	}
	now := time.Now()
	for _, tc := range []struct {
		name string
		from *p2p.Host
		reg  *p2p.NodeRegistration
		code string
	}{
		{"signed by another key", f.node, reg(otherKey, key, now), p2p.CodeInvalid},
		{"sent by another host", f.gw, reg(f.node.Key, key, now), p2p.CodeInvalid},
		{"bad API key", f.node, reg(f.node.Key, "trk_nope", now), p2p.CodeUnknownKey},
		{"stale", f.node, reg(f.node.Key, key, now.Add(-time.Hour)), p2p.CodeInvalid},
		{"missing", f.node, nil, p2p.CodeInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.call(t, tc.from, &p2p.SettleRequest{Op: p2p.OpRegister, Register: tc.reg})
			wantRPCCode(t, err, tc.code)
			if acct, ok := f.led.NodeAccount(nodeID); ok {
				t.Fatalf("node linked to %q by a refused registration", acct)
			}
		})
	}

	resp, err := f.call(t, f.node, &p2p.SettleRequest{Op: p2p.OpRegister, Register: reg(f.node.Key, key, time.Now())})
	if err != nil {
		t.Fatalf("good registration: %v", err)
	}
	if resp.Account == nil || resp.Account.Account != account {
		t.Errorf("registration answered %+v, want account %s", resp.Account, account)
	}
	if acct, ok := f.led.NodeAccount(nodeID); !ok || acct != account {
		t.Errorf("NodeAccount = %q %v, want %q", acct, ok, account)
	}
	if got := f.led.Nodes(account); len(got) != 1 || got[0] != nodeID {
		t.Errorf("Nodes(%s) = %v", account, got)
	}
	checkInvariants(t, f.led)
}

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	good.Host, good.Ledger = &p2p.Host{}, &ledger.Ledger{}
	if err := good.Validate(); err != nil {
		t.Fatalf("default config with host and ledger: %v", err)
	}
	for name, tweak := range map[string]func(*Config){
		"no host":           func(c *Config) { c.Host = nil },
		"no ledger":         func(c *Config) { c.Ledger = nil },
		"share above 100%":  func(c *Config) { c.Terms.ProviderBps = 10001 },
		"negative share":    func(c *Config) { c.Terms.ProviderBps = -1 },
		"negative credit":   func(c *Config) { c.StartingCredit = -1 },
		"negative sign-ups": func(c *Config) { c.SignupLimit = -1 },
	} {
		c := good
		tweak(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate() = nil", name)
		}
		if _, err := New(c); err == nil {
			t.Errorf("%s: New() = nil error", name)
		}
	}
}

func TestRateLimiter(t *testing.T) {
	rl := newRateLimiter(2, time.Hour)
	t0 := time.Unix(1_700_000_000, 0)
	if !rl.allow("a", t0) || !rl.allow("a", t0.Add(time.Minute)) {
		t.Fatal("first two refused")
	}
	if rl.allow("a", t0.Add(2*time.Minute)) {
		t.Fatal("third within the window allowed")
	}
	if !rl.allow("b", t0.Add(2*time.Minute)) {
		t.Fatal("another address refused")
	}
	if !rl.allow("a", t0.Add(time.Hour)) {
		t.Fatal("first slot not freed after the window")
	}
	if rl.allow("a", t0.Add(time.Hour+time.Second)) {
		t.Fatal("second slot freed too early")
	}
	if unlimited := newRateLimiter(0, time.Hour); !unlimited.allow("a", t0) || !unlimited.allow("a", t0) {
		t.Fatal("limit 0 should be unlimited")
	}
}
