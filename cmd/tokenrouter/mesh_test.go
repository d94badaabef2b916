package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/internal/launch"
)

// procMesh is a whole network of separate tokenrouter processes, each
// started by hand with SPEC §7's flags, one engine per node.
type procMesh struct {
	t           *testing.T
	root        string
	maddr       string
	platform    string
	settleURL   string
	gwURL       string
	consumerKey string
	operatorKey string
	engines     []*proc
	engineAddrs []string
	nodes       []*proc
	nodeIDs     []string
	settle      *proc
	gw          *proc
	gwArgs      []string
}

// settleProc is the running settlement peer.
func (m *procMesh) settleProc(t *testing.T) *proc { return m.settle }

type meshSpec struct {
	settleArgs []string // extra flags for the settlement peer
	nodes      int
	capacity   int
	engineArgs func(i int) []string // extra flags for engine i
}

func startProcMesh(t *testing.T, spec meshSpec) *procMesh {
	t.Helper()
	m := &procMesh{t: t, root: t.TempDir()}
	lo := "/ip4/127.0.0.1/tcp/0"
	boot := start(t, "bootstrap", nil, "bootstrap", "--data", m.dir("boot"), "--listen", lo)
	waitFile(t, boot, filepath.Join(m.dir("boot"), "ready"))
	m.maddr = waitFile(t, boot, filepath.Join(m.dir("boot"), "addrs"))

	settle := start(t, "settle", nil, append([]string{"settle", "--data", m.dir("settle"), "--listen", lo, "--bootstrap", m.maddr,
		"--http", "127.0.0.1:0", "--signup-limit", "0"}, spec.settleArgs...)...)
	waitFile(t, settle, filepath.Join(m.dir("settle"), "ready"))
	m.settle = settle
	m.platform = waitFile(t, settle, filepath.Join(m.dir("settle"), "peer-id"))
	m.settleURL = "http://" + waitFile(t, settle, filepath.Join(m.dir("settle"), "http-addr"))
	ctx := context.Background()
	op, err := launch.CreateAccount(ctx, m.settleURL)
	if err != nil {
		t.Fatal(err)
	}
	consumer, err := launch.CreateAccount(ctx, m.settleURL)
	if err != nil {
		t.Fatal(err)
	}
	m.operatorKey, m.consumerKey = op.APIKey, consumer.APIKey

	for i := range spec.nodes {
		var extra []string
		if spec.engineArgs != nil {
			extra = spec.engineArgs(i)
		}
		m.startEngine(i, "127.0.0.1:0", extra...)
		name := fmt.Sprintf("node-%d", i)
		n := start(t, name, []string{"TOKENROUTER_ACCOUNT_KEY=" + m.operatorKey}, "node", "--data", m.dir(name), "--listen", lo,
			"--bootstrap", m.maddr, "--platform", m.platform, "--upstream", "http://"+m.engineAddrs[i]+"/v1",
			"--capacity", fmt.Sprint(spec.capacity), "--synthetic")
		m.nodes = append(m.nodes, n)
	}
	for i, n := range m.nodes {
		name := fmt.Sprintf("node-%d", i)
		waitFile(t, n, filepath.Join(m.dir(name), "ready"))
		m.nodeIDs = append(m.nodeIDs, waitFile(t, n, filepath.Join(m.dir(name), "peer-id")))
	}
	m.gwArgs = []string{"gateway", "--data", m.dir("gw"), "--listen", lo, "--bootstrap", m.maddr,
		"--platform", m.platform, "--http", "127.0.0.1:0"}
	gw := start(t, "gateway", nil, m.gwArgs...)
	m.gw = gw
	waitFile(t, gw, filepath.Join(m.dir("gw"), "ready"))
	m.gwURL = "http://" + waitFile(t, gw, filepath.Join(m.dir("gw"), "http-addr"))
	if err := launch.WaitInstances(ctx, m.gwURL, m.consumerKey, spec.nodes, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return m
}

func (m *procMesh) dir(name string) string { return filepath.Join(m.root, name) }

// startEngine starts (or restarts, on the same address) engine i.
func (m *procMesh) startEngine(i int, addr string, extra ...string) {
	name := fmt.Sprintf("engine-%d", i)
	dir := m.dir(fmt.Sprintf("%s-%d", name, time.Now().UnixNano()))
	args := append([]string{"engine", "--listen", addr, "--data", dir, "--model", "synthetic-1"}, extra...)
	p := start(m.t, name, nil, args...)
	bound := waitFile(m.t, p, filepath.Join(dir, "http-addr"))
	if i < len(m.engines) {
		m.engines[i] = p
		return
	}
	m.engines = append(m.engines, p)
	m.engineAddrs = append(m.engineAddrs, bound)
}

// stop ends a process and waits for it.
func (p *proc) stop(sig syscall.Signal) {
	p.cmd.Process.Signal(sig)
	p.cmd.Wait()
}

// callResult is one call as the client saw it.
type callResult struct {
	status int
	node   string
	body   string
}

// call makes one chat completion through the gateway.
func (m *procMesh) call(body string) callResult {
	req, _ := http.NewRequest(http.MethodPost, m.gwURL+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+m.consumerKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return callResult{status: -1, body: err.Error()}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return callResult{status: resp.StatusCode, node: resp.Header.Get("x-tokenrouter-node"), body: string(b)}
}

// instance is one entry of the gateway's /debug/instances.
type instance struct {
	Node      string  `json:"node"`
	State     string  `json:"state"`
	Breaker   string  `json:"breaker"`
	Candidate bool    `json:"candidate"`
	Spare     float64 `json:"spare_capacity"`
	RampUp    float64 `json:"ramp_up"`
	Health    float64 `json:"health_score"`
	TokPerSec float64 `json:"tok_s"`
}

func (m *procMesh) instances() map[string]instance {
	m.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, m.gwURL+"/debug/instances", nil)
	req.Header.Set("Authorization", "Bearer "+m.consumerKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		m.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Models []struct {
			Instances []instance `json:"instances"`
		} `json:"models"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		m.t.Fatal(err)
	}
	byNode := map[string]instance{}
	for _, mo := range out.Models {
		for _, in := range mo.Instances {
			byNode[in.Node] = in
		}
	}
	return byNode
}

func chat(maxTokens int, stream bool) string {
	return fmt.Sprintf(`{"model":"synthetic-1","messages":[{"role":"user","content":"route me"}],"max_tokens":%d,"stream":%v}`, maxTokens, stream)
}
