package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
)

// exitOf waits for a process that should stop on its own.
func exitOf(t *testing.T, p *proc) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not exit; output:\n%s", p.name, p.out.String())
		return nil
	}
}

// TestCloudNodeMasterKeyProcess runs `tokenrouter settle` as an operator
// would with TOKENROUTER_MASTER_KEY, registers a hosted cloud node for a
// token-protected engine, and restarts it: with the same key the node comes
// back; a malformed or a different key stops the start with a clear error.
// The token shows in no output and no file.
func TestCloudNodeMasterKeyProcess(t *testing.T) {
	var b [16]byte
	rand.Read(b[:])
	token := "sk-proc-" + hex.EncodeToString(b[:])
	cfg := engine.DefaultSyntheticConfig()
	cfg.Models, cfg.Rate = []string{"cloud-proc"}, 0
	syn, err := engine.NewSynthetic(cfg)
	if err != nil {
		t.Fatal(err)
	}
	eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, `{"error":{"message":"bad key","type":"invalid_request_error"}}`, http.StatusUnauthorized)
			return
		}
		syn.Handler().ServeHTTP(w, r)
	}))
	defer eng.Close()

	data := filepath.Join(t.TempDir(), "settle")
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x5a}, 32))
	args := []string{"settle", "--data", data, "--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0"}
	var outputs []string
	// The engine is on loopback: the settlement peer may call it only with
	// --cloud-allow-private, given here through its environment variable.
	allowPrivate := "true"
	run := func(env string) *proc {
		os.Remove(filepath.Join(data, "ready"))
		return start(t, "settle", []string{"TOKENROUTER_MASTER_KEY=" + env,
			"TOKENROUTER_CLOUD_ALLOW_PRIVATE=" + allowPrivate}, args...)
	}
	stop := func(p *proc) {
		p.cmd.Process.Signal(syscall.SIGTERM)
		if err := exitOf(t, p); err != nil {
			t.Fatalf("settle stopped with %v:\n%s", err, p.out.String())
		}
		outputs = append(outputs, p.out.String())
	}
	call := func(p *proc, method, path, apiKey string, body any) (int, []byte) {
		url := "http://" + waitFile(t, p, filepath.Join(data, "http-addr")) + path
		var rd io.Reader
		if body != nil {
			raw, _ := json.Marshal(body)
			rd = bytes.NewReader(raw)
		}
		req, _ := http.NewRequest(method, url, rd)
		req.Header.Set("Authorization", "Bearer "+apiKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		outputs = append(outputs, string(out))
		return resp.StatusCode, out
	}
	waitServing := func(p *proc, apiKey string) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, body := call(p, http.MethodGet, "/v1/nodes/cloud", apiKey, nil)
			if strings.Contains(string(body), `"status":"serving"`) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the hosted node never served: %s\n%s", body, p.out.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	s := run(key)
	waitFile(t, s, filepath.Join(data, "ready"))
	acct, err := launch.CreateAccount(context.Background(), "http://"+waitFile(t, s, filepath.Join(data, "http-addr")))
	if err != nil {
		t.Fatal(err)
	}
	code, body := call(s, http.MethodPost, "/v1/nodes/cloud", acct.APIKey,
		map[string]any{"base_url": eng.URL + "/v1", "api_token": token, "models": []string{"cloud-proc"}})
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/nodes/cloud = %d %s", code, body)
	}
	waitServing(s, acct.APIKey)
	stop(s)
	if _, err := os.Stat(filepath.Join(data, "master.key")); !os.IsNotExist(err) {
		t.Errorf("with TOKENROUTER_MASTER_KEY set, a master.key file was written anyway: %v", err)
	}

	for _, tc := range []struct{ name, key, want string }{
		{"malformed", "hunter2", "TOKENROUTER_MASTER_KEY"},
		{"another key", base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x11}, 32)), "does not open with this master key"},
	} {
		p := run(tc.key)
		err := exitOf(t, p)
		outputs = append(outputs, p.out.String())
		if err == nil || !strings.Contains(p.out.String(), tc.want) {
			t.Fatalf("%s master key: exit %v, output %q; want a failed start saying %q", tc.name, err, p.out.String(), tc.want)
		}
		t.Logf("%s master key: %s", tc.name, strings.TrimSpace(p.out.String()))
	}

	s = run(key)
	waitFile(t, s, filepath.Join(data, "ready"))
	waitServing(s, acct.APIKey)
	stop(s)

	// Without --cloud-allow-private the loopback engine may not be called:
	// the node registered before fails with the rule, and a new
	// registration is refused before any request reaches the engine.
	allowPrivate = "false"
	s = run(key)
	waitFile(t, s, filepath.Join(data, "ready"))
	for deadline := time.Now().Add(30 * time.Second); ; {
		_, body := call(s, http.MethodGet, "/v1/nodes/cloud", acct.APIKey, nil)
		if strings.Contains(string(body), `"status":"failed"`) && strings.Contains(string(body), "--cloud-allow-private") {
			t.Logf("without the flag: %s", body)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("without --cloud-allow-private the node did not fail naming the flag: %s\n%s", body, s.out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	code, body = call(s, http.MethodPost, "/v1/nodes/cloud", acct.APIKey,
		map[string]any{"base_url": eng.URL + "/v1", "api_token": token, "models": []string{"cloud-proc"}})
	if code != http.StatusBadRequest || !strings.Contains(string(body), `"code":"upstream_not_allowed"`) {
		t.Fatalf("registration without --cloud-allow-private = %d %s; want 400 upstream_not_allowed", code, body)
	}
	stop(s)

	for _, o := range outputs {
		if strings.Contains(o, token) {
			t.Fatalf("the token shows in output or an answer:\n%s", o)
		}
	}
	filepath.WalkDir(data, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if raw, _ := os.ReadFile(path); bytes.Contains(raw, []byte(token)) {
				t.Errorf("%s holds the token", path)
			}
		}
		return nil
	})
}
