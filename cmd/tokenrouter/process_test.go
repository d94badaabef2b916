package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tokenrouter-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "tokenrouter")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build tokenrouter:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is one tokenrouter process started by hand, as an operator would.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *testkit.SyncBuffer
}

func start(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	return startCmd(t, name, env, exec.Command(binary, args...))
}

// startCmd starts cmd (a tokenrouter process, perhaps behind a wrapper such
// as ip netns exec) with env added, and stops it with SIGTERM at cleanup.
func startCmd(t *testing.T, name string, env []string, cmd *exec.Cmd) *proc {
	t.Helper()
	cmd.Env = append(os.Environ(), env...)
	out := &testkit.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, out: out}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("%s did not stop on SIGTERM", name)
		}
		if t.Failed() {
			t.Logf("--- %s output ---\n%s", name, out.String())
		}
	})
	return p
}

// waitFile waits for a role's file (ready, addrs, ...) and returns its first line.
func waitFile(t *testing.T, p *proc, path string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if line, err := launch.ReadFirstLine(path); err == nil {
			return line
		}
		if p.cmd.ProcessState != nil {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("%s: %s never appeared; output:\n%s", p.name, path, p.out.String())
	return ""
}

// The SPEC §7 walk-through: every role a separate process started by hand,
// then one paid call.
func TestRolesAsProcesses(t *testing.T) {
	root := t.TempDir()
	d := func(n string) string { return filepath.Join(root, n) }
	lo := "/ip4/127.0.0.1/tcp/0"

	boot := start(t, "bootstrap", nil, "bootstrap", "--data", d("boot"), "--listen", lo)
	waitFile(t, boot, filepath.Join(d("boot"), "ready"))
	maddr := waitFile(t, boot, filepath.Join(d("boot"), "addrs"))
	if !strings.Contains(maddr, "/p2p/12D3Koo") {
		t.Fatalf("addrs line %q lacks /p2p/<id>", maddr)
	}

	// settle takes --bootstrap from the environment, its listen address from a config file.
	cfg := filepath.Join(root, "settle.yaml")
	os.WriteFile(cfg, []byte("listen:\n  - "+lo+"\nhttp: 127.0.0.1:0\n"), 0o600)
	settle := start(t, "settle", []string{"TOKENROUTER_BOOTSTRAP=" + maddr}, "settle", "--data", d("settle"), "--config", cfg)
	waitFile(t, settle, filepath.Join(d("settle"), "ready"))
	platform := waitFile(t, settle, filepath.Join(d("settle"), "peer-id"))
	settleURL := "http://" + waitFile(t, settle, filepath.Join(d("settle"), "http-addr"))
	if st, err := os.Stat(filepath.Join(d("settle"), "identity.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("identity key not 0600: %v %v", st.Mode(), err)
	}

	ctx := context.Background()
	operator, err := launch.CreateAccount(ctx, settleURL)
	if err != nil {
		t.Fatal(err)
	}
	consumer, err := launch.CreateAccount(ctx, settleURL)
	if err != nil {
		t.Fatal(err)
	}

	eng := start(t, "engine", nil, "engine", "--listen", "127.0.0.1:0", "--data", d("engine"), "--model", "tiny-synthetic", "--rate", "0")
	engineAddr := waitFile(t, eng, filepath.Join(d("engine"), "http-addr"))

	node := start(t, "node", []string{"TOKENROUTER_ACCOUNT_KEY=" + operator.APIKey}, "node", "--data", d("node"), "--listen", lo,
		"--bootstrap", maddr, "--platform", platform, "--upstream", "http://"+engineAddr+"/v1", "--capacity", "4")
	waitFile(t, node, filepath.Join(d("node"), "ready"))
	nodeID := waitFile(t, node, filepath.Join(d("node"), "peer-id"))

	gw := start(t, "gateway", nil, "gateway", "--data", d("gw"), "--listen", lo, "--bootstrap", maddr, "--platform", platform, "--http", "127.0.0.1:0")
	waitFile(t, gw, filepath.Join(d("gw"), "ready"))
	gwURL := "http://" + waitFile(t, gw, filepath.Join(d("gw"), "http-addr"))
	if err := launch.WaitInstances(ctx, gwURL, consumer.APIKey, 1, 20*time.Second); err != nil {
		t.Fatal(err)
	}

	// The node found out by itself that its engine is the synthetic one, and says so.
	var models struct {
		Data []struct {
			Instances []struct {
				Synthetic bool `json:"synthetic"`
			} `json:"instances"`
		} `json:"data"`
	}
	json.Unmarshal(getJSON(t, gwURL+"/v1/models", consumer.APIKey), &models)
	if len(models.Data) != 1 || len(models.Data[0].Instances) != 1 || !models.Data[0].Instances[0].Synthetic {
		t.Fatalf("the synthetic engine is not labelled synthetic: %+v", models)
	}

	body := `{"model":"tiny-synthetic","messages":[{"role":"user","content":"one paid call"}],"max_tokens":9}`
	req, _ := http.NewRequest(http.MethodPost, gwURL+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+consumer.APIKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("paid call: %s %s", resp.Status, raw)
	}
	if got := resp.Header.Get("x-tokenrouter-node"); got != nodeID {
		t.Fatalf("x-tokenrouter-node %q, want %q", got, nodeID)
	}
	var out struct {
		Usage struct {
			CostUcr int64 `json:"cost_ucr"`
		} `json:"usage"`
	}
	json.Unmarshal(raw, &out)
	if out.Usage.CostUcr <= 0 {
		t.Fatalf("no cost in %s", raw)
	}

	// Settled within 2 s, visible on the settlement peer and the gateway alike.
	deadline := time.Now().Add(2 * time.Second)
	var acct launch.AccountResponse
	var calls int64
	for time.Now().Before(deadline) {
		a := getJSON(t, settleURL+"/v1/account", consumer.APIKey)
		json.Unmarshal(a, &acct)
		var c struct{ Calls int64 }
		json.Unmarshal(a, &c)
		if calls = c.Calls; calls == 1 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if calls != 1 || acct.BalanceUcr != 5_000_000-out.Usage.CostUcr {
		t.Fatalf("after one call costing %d: calls %d, balance %d", out.Usage.CostUcr, calls, acct.BalanceUcr)
	}
	var op struct {
		EarnedUcr int64 `json:"earned_ucr"`
	}
	json.Unmarshal(getJSON(t, gwURL+"/v1/account", operator.APIKey), &op)
	if op.EarnedUcr != out.Usage.CostUcr*8/10 {
		t.Fatalf("operator earned %d of %d, want the 80%% floor", op.EarnedUcr, out.Usage.CostUcr)
	}
}

func getJSON(t *testing.T, url, key string) []byte {
	t.Helper()
	status, b := getWithStatus(t, url, key)
	if status != 200 {
		t.Fatalf("GET %s: %d %s", url, status, b)
	}
	return b
}

// dev starts, prints a working curl line, writes the demo key 0600 and
// stops cleanly on SIGINT.
func TestDevCommand(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(binary, "dev", "--data", dir, "--nodes", "2", "--rate", "0", "--gateway-addr", "127.0.0.1:0", "--settle-addr", "127.0.0.1:0")
	out := &testkit.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	keyFile := filepath.Join(dir, "dev-api-key")
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "Ctrl-C stops everything") {
		if time.Now().After(deadline) {
			t.Fatalf("dev did not come up:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	st, err := os.Stat(keyFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("dev-api-key: %v %v", st, err)
	}
	var curl string
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.Contains(l, "curl") && strings.Contains(l, "chat/completions") {
			curl = strings.TrimSpace(l)
		}
	}
	if curl == "" {
		t.Fatalf("no curl line printed:\n%s", out.String())
	}
	// Paste the printed line into a shell, as a newcomer would (.ci/run installs curl).
	res, err := exec.Command("sh", "-c", curl).CombinedOutput()
	if err != nil || !strings.Contains(string(res), `"cost_ucr"`) {
		t.Fatalf("the printed curl line failed: %v\n%s\n%s", err, curl, res)
	}
	if _, err := os.Stat(filepath.Join(dir, "settle", "ledger")); err != nil {
		t.Fatalf("ledger not in <data>/settle: %v", err)
	}
	cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("dev exited with %v:\n%s", err, out.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("dev did not stop on SIGINT:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "stopped cleanly") {
		t.Fatalf("no clean stop:\n%s", out.String())
	}
}
