package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// No free inference through your own gateway: a gateway that drops every
// receipt (--drop-receipts plays a consumer's modified gateway) serves 200
// paid calls, and within the claim grace every one of them is billed from
// the nodes' own claims: the consumer pays what its gateway showed it, the
// provider earns exactly its 80%, and the ledger verifies. Calls through an
// honest gateway meanwhile are billed once, by their receipts, though their
// nodes report claims for them too.
func TestDroppedReceiptsAreBilledFromNodeClaims(t *testing.T) {
	const grace = 4 * time.Second
	m := startProcMesh(t, meshSpec{settleArgs: []string{"--claim-grace", grace.String()}, nodes: 2, capacity: 80, // 10% of it while ramping up
		engineArgs: func(int) []string { return []string{"--rate", "0"} }})
	cheatDir := m.dir("cheat-gw")
	cheat, cheatURL := m.startCheatingGateway(t, "cheating-gateway", cheatDir, 2)

	// 200 calls through the cheating gateway, 20 through the honest one.
	costs := make(chan int64, 220)
	var wg sync.WaitGroup
	work := make(chan string, 220)
	for i := range 220 {
		url := cheatURL
		if i%11 == 10 {
			url = m.gwURL
		}
		work <- url
	}
	close(work)
	errs := make(chan string, 220)
	for range 6 {
		wg.Go(func() {
			for url := range work {
				r := callAt(url, m.consumerKey, chat(4+len(costs)%5, false))
				var out struct {
					Usage struct {
						CostUcr int64 `json:"cost_ucr"`
					} `json:"usage"`
				}
				if r.status != 200 || json.Unmarshal([]byte(r.body), &out) != nil || out.Usage.CostUcr <= 0 {
					errs <- fmt.Sprintf("%d %s", r.status, r.body)
					continue
				}
				costs <- out.Usage.CostUcr
			}
		})
	}
	wg.Wait()
	close(costs)
	close(errs)
	for e := range errs {
		t.Fatalf("a call failed: %s", e)
	}
	var total, provider int64
	for c := range costs {
		total += c
		provider += economy.ComputeLegs(c, economy.DefaultTerms(), economy.NoModifiers(), 0).ToProvider
	}
	served := time.Now()
	// Before the grace, only the honest gateway's 20 are billed.
	time.Sleep(time.Second)
	if a := account(t, m.settleURL, m.consumerKey); a.Calls != 20 {
		t.Fatalf("before the claim grace: %d calls billed, want the honest gateway's 20", a.Calls)
	}
	var a accountView
	deadline := time.Now().Add(grace + 10*time.Second)
	for a = account(t, m.settleURL, m.consumerKey); a.Calls < 220 && time.Now().Before(deadline); a = account(t, m.settleURL, m.consumerKey) {
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("220 calls (200 without receipts) billed %.1f s after they were served (claim grace %s)", time.Since(served).Seconds(), grace)
	if a.Calls != 220 || a.SpentUcr != total || a.BalanceUcr != 5_000_000-total {
		t.Fatalf("consumer after 220 calls costing %d: %+v", total, a)
	}
	var full struct {
		UnreceiptedCalls int64 `json:"unreceipted_calls"`
	}
	json.Unmarshal(getJSON(t, m.settleURL+"/v1/account", m.consumerKey), &full)
	if full.UnreceiptedCalls != 200 {
		t.Fatalf("unreceipted_calls %d, want 200", full.UnreceiptedCalls)
	}
	// The network view names the gateway that sent no receipts.
	var network struct {
		Gateways []struct {
			Gateway          string `json:"gateway"`
			UnreceiptedCalls int64  `json:"unreceipted_calls"`
		} `json:"gateways"`
	}
	json.Unmarshal(getJSON(t, m.settleURL+"/v1/network", ""), &network)
	cheatID := waitFile(t, cheat, filepath.Join(cheatDir, "peer-id"))
	if len(network.Gateways) != 1 || network.Gateways[0].Gateway != cheatID || network.Gateways[0].UnreceiptedCalls != 200 {
		t.Fatalf("GET /v1/network gateways: %+v, want %s with 200 unreceipted calls", network.Gateways, cheatID)
	}
	var op struct {
		EarnedUcr int64 `json:"earned_ucr"`
	}
	json.Unmarshal(getJSON(t, m.settleURL+"/v1/account", m.operatorKey), &op)
	if op.EarnedUcr != provider {
		t.Fatalf("the operator earned %d of %d, want exactly its 80%%: %d", op.EarnedUcr, total, provider)
	}
	// The cheating gateway gets no new credit until it sends its receipts:
	// restarted (its credit line was in memory), its next call is refused;
	// the honest gateway still serves the same account.
	cheat.stop(syscall.SIGTERM)
	os.Remove(filepath.Join(cheatDir, "ready"))
	os.Remove(filepath.Join(cheatDir, "http-addr"))
	cheat, cheatURL = m.startCheatingGateway(t, "cheating-gateway-again", cheatDir, 2)
	if r := callAt(cheatURL, m.consumerKey, chat(4, false)); r.status != 402 {
		t.Fatalf("the cheating gateway got new credit: %d %s", r.status, r.body)
	}
	if r := m.call(chat(4, false)); r.status != 200 {
		t.Fatalf("the honest gateway: %d %s", r.status, r.body)
	}
	// The books: the chain, its signatures and every balance re-checked.
	m.settle.stop(syscall.SIGTERM)
	if out, err := exec.Command(binary, "ledger", "verify", "--data", m.dir("settle"), "--platform", m.platform).CombinedOutput(); err != nil {
		t.Fatalf("ledger verify: %v\n%s", err, out)
	}
}

// startCheatingGateway starts a gateway that never sends receipts
// (--drop-receipts) in dir and waits until it routes to nodes instances.
func (m *procMesh) startCheatingGateway(t *testing.T, name, dir string, nodes int) (*proc, string) {
	t.Helper()
	p := start(t, name, nil, "gateway", "--data", dir, "--listen", "/ip4/127.0.0.1/tcp/0",
		"--bootstrap", m.maddr, "--platform", m.platform, "--http", "127.0.0.1:0", "--drop-receipts")
	waitFile(t, p, filepath.Join(dir, "ready"))
	url := "http://" + waitFile(t, p, filepath.Join(dir, "http-addr"))
	if err := waitInstances(url, m.consumerKey, nodes); err != nil {
		t.Fatal(err)
	}
	return p, url
}

// callAt makes one chat completion through the gateway at url.
func callAt(url, key, body string) callResult {
	m := &procMesh{gwURL: url, consumerKey: key}
	return m.call(body)
}

// waitInstances waits until the gateway at url routes to n instances.
func waitInstances(url, key string, n int) error {
	return launch.WaitInstances(context.Background(), url, key, n, 30*time.Second)
}

// A settlement peer killed while node claims wait out their grace loses
// none of them and bills none twice: restarted, it bills each once.
func TestNodeClaimsSurviveSettleKill(t *testing.T) {
	const grace = 3 * time.Second
	m := startProcMesh(t, meshSpec{settleArgs: []string{"--claim-grace", grace.String()}, nodes: 1, capacity: 80,
		engineArgs: func(int) []string { return []string{"--rate", "0"} }})
	_, cheatURL := m.startCheatingGateway(t, "cheating-gateway", m.dir("cheat-gw"), 1)
	const calls = 20
	var total int64
	for range calls {
		r := callAt(cheatURL, m.consumerKey, chat(5, false))
		var out struct {
			Usage struct {
				CostUcr int64 `json:"cost_ucr"`
			} `json:"usage"`
		}
		if r.status != 200 || json.Unmarshal([]byte(r.body), &out) != nil {
			t.Fatalf("call: %d %s", r.status, r.body)
		}
		total += out.Usage.CostUcr
	}
	// Wait until settlement holds every claim (acknowledged, durable), then kill it.
	deadline := time.Now().Add(10 * time.Second)
	for metricSum(t, m.settleURL, `tokenrouter_settle_node_claims_total{outcome="pending"}`) < calls && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	m.settle.stop(syscall.SIGKILL)
	os.Remove(filepath.Join(m.dir("settle"), "ready"))
	os.Remove(filepath.Join(m.dir("settle"), "http-addr"))
	settle := start(t, "settle-again", nil, "settle", "--data", m.dir("settle"), "--listen", "/ip4/127.0.0.1/tcp/0",
		"--bootstrap", m.maddr, "--http", "127.0.0.1:0", "--signup-limit", "0", "--claim-grace", grace.String())
	waitFile(t, settle, filepath.Join(m.dir("settle"), "ready"))
	m.settle = settle
	m.settleURL = "http://" + waitFile(t, settle, filepath.Join(m.dir("settle"), "http-addr"))
	var a accountView
	deadline = time.Now().Add(grace + 10*time.Second)
	for a = account(t, m.settleURL, m.consumerKey); a.Calls < calls && time.Now().Before(deadline); a = account(t, m.settleURL, m.consumerKey) {
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(grace) // anything billed twice would show by now
	if a = account(t, m.settleURL, m.consumerKey); a.Calls != calls || a.SpentUcr != total {
		t.Fatalf("after the restart: %+v, want %d calls costing %d", a, calls, total)
	}
	m.settle.stop(syscall.SIGTERM)
	if out, err := exec.Command(binary, "ledger", "verify", "--data", m.dir("settle"), "--platform", m.platform).CombinedOutput(); err != nil {
		t.Fatalf("ledger verify: %v\n%s", err, out)
	}
}
