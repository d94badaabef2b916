package settlement

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/bootstrap"
	"github.com/tokenrouter/tokenrouter/gateway"
	"github.com/tokenrouter/tokenrouter/internal/journal"
	"github.com/tokenrouter/tokenrouter/internal/openai"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

const cloudModel = "cloud-model"

// authEngine is a cloud provider stand-in: the synthetic engine behind a
// bearer-token check. Like some real providers it quotes the key it was
// given when it refuses it, and it can be told to quote its own token in
// errors, so tests can check the token never travels further.
type authEngine struct {
	srv        *httptest.Server
	token      string
	failModels atomic.Int32 // answer this many /models calls with a 503 quoting the token
	refused    atomic.Int32
	served     atomic.Int32
}

func newAuthEngine(t *testing.T, token string) *authEngine {
	t.Helper()
	cfg := engine.DefaultSyntheticConfig()
	cfg.Models, cfg.Rate = []string{cloudModel}, 0
	syn, err := engine.NewSynthetic(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e := &authEngine{token: token}
	inner := syn.Handler()
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		given, _ := openai.BearerKey(r)
		if given != token {
			e.refused.Add(1)
			openai.WriteError(w, http.StatusUnauthorized, "invalid_request_error", "", "invalid_api_key",
				"Incorrect API key provided: "+given)
			return
		}
		if strings.HasSuffix(r.URL.Path, "/models") && e.failModels.Load() > 0 {
			e.failModels.Add(-1)
			openai.WriteError(w, http.StatusServiceUnavailable, "server_error", "", "", "overloaded, retry later (key "+token+")")
			return
		}
		body, _ := io.ReadAll(r.Body)
		if bytes.Contains(body, []byte("leak-me")) {
			openai.WriteError(w, http.StatusInternalServerError, "server_error", "", "", "internal error for key "+token)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		if r.Method == http.MethodPost {
			e.served.Add(1)
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *authEngine) baseURL() string { return e.srv.URL + "/v1" }

// cloudPeer is a running settlement peer with hosted cloud nodes: real
// libp2p host, real Pebble ledger, its HTTP API on loopback.
type cloudPeer struct {
	s    *Settlement
	led  *ledger.Ledger
	host *p2p.Host
	url  string
	stop func()
}

// startCloudPeer starts a settlement peer on dir (identity, ledger, master
// key file and cloud records all live there), bootstrapped from boot.
// allowPrivate is CloudConfig.AllowPrivate: tests whose engines run on
// loopback need it.
func startCloudPeer(t *testing.T, dir, boot, masterKey string, logs io.Writer, allowPrivate bool) (*cloudPeer, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := p2p.NewHost(ctx, p2p.Config{DataDir: dir, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Bootstrap: []string{boot}})
	if err != nil {
		t.Fatal(err)
	}
	led, err := ledger.Open(filepath.Join(dir, "ledger"), ledger.Options{Signer: h.Key})
	if err != nil {
		h.Close()
		t.Fatal(err)
	}
	fail := func(err error) (*cloudPeer, error) { led.Close(); h.Close(); return nil, err }
	cfg := DefaultConfig()
	cfg.Host, cfg.Ledger, cfg.SignupLimit = h, led, 0
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.Cloud.Box, err = LoadMasterKey(masterKey, filepath.Join(dir, MasterKeyFile)); err != nil {
		return fail(err)
	}
	cfg.Cloud.Dir = filepath.Join(dir, "cloud")
	cfg.Cloud.AllowPrivate = allowPrivate
	s, err := New(cfg)
	if err != nil {
		return fail(err)
	}
	rctx, rcancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- s.Run(rctx, func(string) { close(ready) }) }()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("settlement peer never became ready")
	}
	srv := httptest.NewServer(s.Handler())
	var once sync.Once
	p := &cloudPeer{s: s, led: led, host: h, url: srv.URL}
	p.stop = func() {
		once.Do(func() {
			srv.Close()
			rcancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			led.Close()
			h.Close()
		})
	}
	t.Cleanup(p.stop)
	return p, nil
}

// do sends an HTTP request with an optional bearer key and JSON body.
func do(t *testing.T, method, url, key string, body any) (int, []byte, http.Header) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, url, rd)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out, resp.Header
}

func (p *cloudPeer) signup(t *testing.T) (key, account string) {
	t.Helper()
	code, body, _ := do(t, http.MethodPost, p.url+"/v1/accounts", "", nil)
	var r signupResp
	if code != http.StatusCreated || json.Unmarshal(body, &r) != nil {
		t.Fatalf("POST /v1/accounts = %d %s", code, body)
	}
	return r.APIKey, r.Account
}

func (p *cloudPeer) earned(t *testing.T, key string) int64 {
	t.Helper()
	code, body, _ := do(t, http.MethodGet, p.url+"/v1/account", key, nil)
	var a p2p.AccountInfo
	if code != http.StatusOK || json.Unmarshal(body, &a) != nil {
		t.Fatalf("GET /v1/account = %d %s", code, body)
	}
	return a.EarnedUcr
}

func (p *cloudPeer) cloudNodes(t *testing.T, key string) []CloudNode {
	t.Helper()
	code, body, _ := do(t, http.MethodGet, p.url+"/v1/nodes/cloud", key, nil)
	var list struct {
		Object string      `json:"object"`
		Data   []CloudNode `json:"data"`
	}
	if code != http.StatusOK || json.Unmarshal(body, &list) != nil || list.Object != "list" {
		t.Fatalf("GET /v1/nodes/cloud = %d %s", code, body)
	}
	return list.Data
}

// waitServing waits until the account's hosted node id serves.
func (p *cloudPeer) waitServing(t *testing.T, key, id string) CloudNode {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last []CloudNode
	for time.Now().Before(deadline) {
		last = p.cloudNodes(t, key)
		for _, n := range last {
			if n.ID == id && n.Status == cloudServing {
				return n
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("hosted node %s never served: %+v", id, last)
	return CloudNode{}
}

func startBootstrap(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := p2p.NewHost(ctx, bootstrap.HostConfig(t.TempDir(), []string{"/ip4/127.0.0.1/tcp/0"}, nil))
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { bootstrap.Run(rctx, h, nil); close(done) }()
	t.Cleanup(func() { rcancel(); <-done; h.Close() })
	return h.FullAddrs()[0]
}

// startGateway runs a real gateway bootstrapped from boot and returns its base URL.
func startGateway(t *testing.T, dir, boot string, platform peer.ID, logs io.Writer) string {
	t.Helper()
	h := newHost(t, boot)
	jr, err := journal.Open(filepath.Join(dir, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := gateway.DefaultConfig()
	cfg.Host, cfg.Platform, cfg.HTTPAddr, cfg.Journal = h, platform, "127.0.0.1:0", jr
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	g, err := gateway.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr, done := make(chan string, 1), make(chan error, 1)
	go func() { done <- g.Run(ctx, func(a string) { addr <- a }) }()
	t.Cleanup(func() { cancel(); <-done; jr.Close() })
	select {
	case a := <-addr:
		return "http://" + a
	case err := <-done:
		t.Fatalf("gateway: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("gateway never served")
	}
	return ""
}

// paidCall makes one chat call through the gateway, retrying while the
// gateway does not yet see the model (404) or the settlement peer.
func paidCall(t *testing.T, gw, key string) (int, []byte, http.Header) {
	t.Helper()
	req := map[string]any{"model": cloudModel, "max_tokens": 8,
		"messages": []map[string]string{{"role": "user", "content": "hello cloud"}}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body, hdr := do(t, http.MethodPost, gw+"/v1/chat/completions", key, req)
		if code == http.StatusOK || time.Now().After(deadline) {
			return code, body, hdr
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitEarned waits until the account has earned more than before.
func waitEarned(t *testing.T, p *cloudPeer, key string, before int64) int64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if e := p.earned(t, key); e > before {
			return e
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("earned_ucr stayed at %d", before)
	return 0
}

// watchGossip records every load announcement a peer bootstrapped from boot sees.
func watchGossip(t *testing.T, boot string) func() [][]byte {
	t.Helper()
	h := newHost(t, boot)
	topic, err := p2p.JoinLoadTopic(h, nil)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen [][]byte
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := sub.Next(ctx)
			if err != nil {
				return
			}
			mu.Lock()
			seen = append(seen, m.Data)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); sub.Cancel(); <-done })
	return func() [][]byte {
		mu.Lock()
		defer mu.Unlock()
		return append([][]byte(nil), seen...)
	}
}

// noSecretInFiles fails if any file under dir holds secret.
func noSecretInFiles(t *testing.T, dir, secret string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		n++
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("%s holds the API token", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatalf("no files under %s", dir)
	}
}

func randomToken() string {
	var b [16]byte
	rand.Read(b[:])
	return "sk-test-" + hex.EncodeToString(b[:])
}

func TestCloudNodeRegistrationRejectsBadInput(t *testing.T) {
	token := randomToken()
	eng := newAuthEngine(t, token)
	p, err := startCloudPeer(t, t.TempDir(), newHost(t).FullAddrs()[0], "", io.Discard, true)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := p.signup(t)
	wrong := randomToken()
	for _, tc := range []struct {
		name        string
		key         string
		body        any
		status      int
		param, code string
	}{
		{"no key", "", map[string]any{"base_url": eng.baseURL(), "api_token": token}, 401, "", "invalid_api_key"},
		{"not JSON", key, "{", 400, "", "invalid_json"},
		{"unknown field", key, map[string]any{"base_url": eng.baseURL(), "token": token}, 400, "", "invalid_json"},
		{"no base url", key, map[string]any{"api_token": token}, 400, "base_url", "invalid_value"},
		{"plain http to a remote host", key, map[string]any{"base_url": "http://api.example.com/v1", "api_token": token}, 400, "base_url", "upstream_not_allowed"},
		{"not http", key, map[string]any{"base_url": "ftp://127.0.0.1/v1", "api_token": token}, 400, "base_url", "invalid_value"},
		{"credentials in the url", key, map[string]any{"base_url": "https://user:" + token + "@api.example.com/v1", "api_token": token}, 400, "base_url", "invalid_value"},
		{"query in the url", key, map[string]any{"base_url": "https://api.example.com/v1?key=" + token, "api_token": token}, 400, "base_url", "invalid_value"},
		{"no token", key, map[string]any{"base_url": eng.baseURL()}, 400, "api_token", "invalid_value"},
		{"token with a newline", key, map[string]any{"base_url": eng.baseURL(), "api_token": "sk-abc\ndef-ghi"}, 400, "api_token", "invalid_value"},
		{"negative capacity", key, map[string]any{"base_url": eng.baseURL(), "api_token": token, "capacity": -1}, 400, "capacity", "invalid_value"},
		{"duplicate model", key, map[string]any{"base_url": eng.baseURL(), "api_token": token, "models": []string{"a", "a"}}, 400, "models", "invalid_value"},
		{"token refused", key, map[string]any{"base_url": eng.baseURL(), "api_token": wrong}, 400, "api_token", "upstream_auth_failed"},
		{"model not served", key, map[string]any{"base_url": eng.baseURL(), "api_token": token, "models": []string{"gpt-9"}}, 400, "models", "model_not_found"},
		{"unreachable", key, map[string]any{"base_url": "http://127.0.0.1:1/v1", "api_token": token}, 400, "base_url", "upstream_unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, _ := do(t, http.MethodPost, p.url+"/v1/nodes/cloud", tc.key, tc.body)
			if code != tc.status {
				t.Fatalf("status %d, want %d: %s", code, tc.status, body)
			}
			e := decodeOpenAIError(t, body)
			if got := e.Error.Code; got == nil || *got != tc.code {
				t.Errorf("code %v, want %q: %s", got, tc.code, body)
			}
			if tc.param != "" && (e.Error.Param == nil || *e.Error.Param != tc.param) {
				t.Errorf("param %v, want %q: %s", e.Error.Param, tc.param, body)
			}
			if bytes.Contains(body, []byte(token)) || bytes.Contains(body, []byte(wrong)) {
				t.Errorf("the answer quotes a token: %s", body)
			}
			t.Logf("%d %s", code, body)
		})
	}
	if got := p.cloudNodes(t, key); len(got) != 0 {
		t.Fatalf("rejected registrations were kept: %+v", got)
	}
	if eng.refused.Load() != 1 {
		t.Errorf("the engine refused %d calls, want only the wrong token's check", eng.refused.Load())
	}
	code, body, _ := do(t, http.MethodDelete, p.url+"/v1/nodes/cloud/cn_nope", key, nil)
	if code != http.StatusNotFound {
		t.Fatalf("DELETE of an unknown node = %d %s", code, body)
	}
	decodeOpenAIError(t, body)
}

// TestCloudNodeServesEarnsAndSurvivesRestart registers a hosted node for a
// token-protected engine, has a real gateway route a paid call to it,
// restarts the settlement peer (the node comes back), refuses a wrong master
// key, deletes the node, and checks the token appeared in no log, answer,
// gossip message or file on the way.
func TestCloudNodeServesEarnsAndSurvivesRestart(t *testing.T) {
	token := randomToken()
	eng := newAuthEngine(t, token)
	boot := startBootstrap(t)
	dir, gwDir := t.TempDir(), t.TempDir()
	logs := &testkit.SyncBuffer{}
	gossip := watchGossip(t, boot)
	var answers [][]byte // every HTTP body the test got, checked for the token at the end

	p, err := startCloudPeer(t, dir, boot, "", logs, true)
	if err != nil {
		t.Fatal(err)
	}
	platform := p.host.ID()
	opKey, operator := p.signup(t)
	userKey, _ := p.signup(t)
	otherKey, _ := p.signup(t)

	code, body, _ := do(t, http.MethodPost, p.url+"/v1/nodes/cloud", opKey,
		map[string]any{"base_url": eng.baseURL() + "/", "api_token": " " + token + "\n", "capacity": 4})
	answers = append(answers, body)
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/nodes/cloud = %d %s", code, body)
	}
	var reg CloudNode
	var raw map[string]any
	json.Unmarshal(body, &raw)
	if err := json.Unmarshal(body, &reg); err != nil || reg.ID == "" || reg.PeerID == "" || !reg.TokenSet ||
		reg.Account != operator || reg.Capacity != 4 || reg.BaseURL != eng.baseURL() || reg.Object != "cloud_node" {
		t.Fatalf("registration answer %s (%v)", body, err)
	}
	for k := range raw {
		if strings.Contains(k, "token") && k != "token_set" {
			t.Errorf("the answer has a field %q", k)
		}
	}
	if acct, ok := p.led.NodeAccount(reg.PeerID); !ok || acct != operator {
		t.Fatalf("hosted node linked to %q, want the operator %q", acct, operator)
	}
	served := p.waitServing(t, opKey, reg.ID)
	if len(served.ServedModels) != 1 || served.ServedModels[0] != cloudModel {
		t.Fatalf("served models %v, want the engine's %q", served.ServedModels, cloudModel)
	}
	if got := p.cloudNodes(t, otherKey); len(got) != 0 {
		t.Fatalf("another account sees the operator's hosted nodes: %+v", got)
	}
	code, body, _ = do(t, http.MethodDelete, p.url+"/v1/nodes/cloud/"+reg.ID, otherKey, nil)
	if code != http.StatusNotFound {
		t.Fatalf("another account's DELETE = %d %s", code, body)
	}

	gw := startGateway(t, gwDir, boot, platform, logs)
	code, body, hdr := paidCall(t, gw, userKey)
	answers = append(answers, body)
	if code != http.StatusOK || hdr.Get("x-tokenrouter-node") != reg.PeerID {
		t.Fatalf("paid call = %d (node %q, want %s) %s", code, hdr.Get("x-tokenrouter-node"), reg.PeerID, body)
	}
	earned := waitEarned(t, p, opKey, 0)

	// The engine quotes its token in a failure: the consumer sees an error, never the token.
	code, body, _ = do(t, http.MethodPost, gw+"/v1/chat/completions", userKey, map[string]any{"model": cloudModel,
		"messages": []map[string]string{{"role": "user", "content": "leak-me"}}})
	answers = append(answers, body)
	if code < 400 {
		t.Fatalf("a failing engine call = %d %s", code, body)
	}

	// Restart with the same data directory: the hosted node comes back with
	// its identity; the engine's first /models answers quote its token.
	p.stop()
	eng.failModels.Store(2)
	if p, err = startCloudPeer(t, dir, boot, "", logs, true); err != nil {
		t.Fatalf("restart: %v", err)
	}
	back := p.waitServing(t, opKey, reg.ID)
	if back.PeerID != reg.PeerID {
		t.Fatalf("after a restart the hosted node is %s, was %s", back.PeerID, reg.PeerID)
	}
	if eng.failModels.Load() != 0 {
		t.Fatalf("the hosted node did not go through the engine's failures (%d left)", eng.failModels.Load())
	}
	code, body, hdr = paidCall(t, gw, userKey)
	answers = append(answers, body)
	if code != http.StatusOK || hdr.Get("x-tokenrouter-node") != reg.PeerID {
		t.Fatalf("paid call after the restart = %d (node %q) %s", code, hdr.Get("x-tokenrouter-node"), body)
	}
	waitEarned(t, p, opKey, earned)

	// Another master key is refused at start, clearly, before any node runs.
	p.stop()
	other := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, MasterKeySize))
	if _, err := startCloudPeer(t, dir, boot, other, logs, true); !errors.Is(err, ErrWrongMasterKey) ||
		!strings.Contains(err.Error(), MasterKeyEnv) {
		t.Fatalf("start with another master key: %v; want ErrWrongMasterKey naming %s", err, MasterKeyEnv)
	} else {
		t.Logf("wrong key: %v", err)
	}
	raw2, _ := os.ReadFile(filepath.Join(dir, MasterKeyFile))
	if p, err = startCloudPeer(t, dir, boot, string(raw2), logs, true); err != nil {
		t.Fatalf("start with the key file's key given as %s: %v", MasterKeyEnv, err)
	}
	p.waitServing(t, opKey, reg.ID)

	code, body, _ = do(t, http.MethodDelete, p.url+"/v1/nodes/cloud/"+reg.ID, opKey, nil)
	answers = append(answers, body)
	if code != http.StatusOK || !strings.Contains(string(body), `"deleted":true`) {
		t.Fatalf("DELETE = %d %s", code, body)
	}
	if got := p.cloudNodes(t, opKey); len(got) != 0 {
		t.Fatalf("after DELETE: %+v", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "cloud", reg.ID)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the deleted node's identity is still on disk: %v", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body, _ = do(t, http.MethodPost, gw+"/v1/chat/completions", userKey, map[string]any{"model": cloudModel,
			"messages": []map[string]string{{"role": "user", "content": "anyone?"}}})
		if code == http.StatusNotFound || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code != http.StatusNotFound {
		t.Fatalf("after DELETE a call = %d %s; want 404, the node stopped", code, body)
	}
	p.stop()
	if n := eng.served.Load(); n < 2 {
		t.Errorf("the engine served %d calls, want at least the 2 paid ones", n)
	}

	// The token is nowhere: not in the logs, the answers, the gossip or any file.
	if strings.Contains(logs.String(), token) {
		t.Error("the logs hold the API token")
	}
	if !strings.Contains(logs.String(), redacted) {
		t.Error("the engine's failures quoting the token never reached the logs redacted")
	}
	for _, b := range answers {
		if bytes.Contains(b, []byte(token)) {
			t.Errorf("an answer holds the API token: %s", b)
		}
	}
	msgs := gossip()
	hosted := 0
	for _, m := range msgs {
		if bytes.Contains(m, []byte(token)) {
			t.Errorf("a gossip message holds the API token: %s", m)
		}
		if bytes.Contains(m, []byte(reg.PeerID)) && bytes.Contains(m, []byte(DefaultCloudConfig().Hardware)) {
			hosted++
		}
	}
	if hosted == 0 {
		t.Errorf("no announcement of the hosted node labelled %q among %d messages", DefaultCloudConfig().Hardware, len(msgs))
	}
	noSecretInFiles(t, dir, token)
	noSecretInFiles(t, gwDir, token)
	for _, f := range []string{MasterKeyFile, filepath.Join("cloud", cloudStoreFile)} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, %v; want mode 0600", f, st, err)
		}
	}
}
