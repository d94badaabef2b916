package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Kill -9 the settlement peer in the middle of paid traffic, restart it on
// the same data: every call that answered 200 is billed exactly once.
func TestSettleKilledMidTrafficBillsEveryCallOnce(t *testing.T) {
	m := startProcMesh(t, meshSpec{nodes: 2, capacity: 50, engineArgs: func(int) []string { return []string{"--rate", "0"} }})
	settleArgs := []string{"settle", "--data", m.dir("settle"), "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", m.maddr,
		"--http", "127.0.0.1:0", "--signup-limit", "0"}

	var (
		stop     atomic.Bool
		ok       atomic.Int64
		refused  atomic.Int64
		mu       sync.Mutex
		totalUcr int64
		wg       sync.WaitGroup
	)
	for range 4 {
		wg.Go(func() {
			for !stop.Load() {
				r := m.call(chat(5, false))
				switch r.status {
				case 200:
					var out struct {
						Usage struct {
							CostUcr int64 `json:"cost_ucr"`
						} `json:"usage"`
					}
					if err := json.Unmarshal([]byte(r.body), &out); err != nil || out.Usage.CostUcr <= 0 {
						t.Errorf("a 200 without cost: %s", r.body)
						return
					}
					ok.Add(1)
					mu.Lock()
					totalUcr += out.Usage.CostUcr
					mu.Unlock()
				case 503, 502:
					refused.Add(1) // the settlement peer is down: no credit to spend against
					time.Sleep(20 * time.Millisecond)
				default:
					t.Errorf("unexpected answer %d: %s", r.status, r.body)
					return
				}
			}
		})
	}
	time.Sleep(1500 * time.Millisecond)
	settle := m.settleProc(t)
	settle.stop(syscall.SIGKILL)
	killedAt := ok.Load()
	// A killed process leaves its ready and http-addr files behind.
	os.Remove(filepath.Join(m.dir("settle"), "ready"))
	os.Remove(filepath.Join(m.dir("settle"), "http-addr"))
	time.Sleep(time.Second)
	duringOutage := ok.Load() - killedAt // served on the gateway's credit line
	restarted := start(t, "settle-restarted", nil, settleArgs...)
	waitFile(t, restarted, filepath.Join(m.dir("settle"), "ready"))
	m.settleURL = "http://" + waitFile(t, restarted, filepath.Join(m.dir("settle"), "http-addr"))
	time.Sleep(2 * time.Second)
	stop.Store(true)
	wg.Wait()
	if killedAt == 0 || ok.Load() == killedAt {
		t.Fatalf("traffic did not span the crash: %d calls before the kill, %d in all", killedAt, ok.Load())
	}
	if duringOutage == 0 {
		t.Fatalf("no call was served while settlement was down: the credit line should carry the gateway")
	}

	// Every 200 settles, once; the balance moved by exactly what they cost.
	want := ok.Load()
	var acct struct {
		BalanceUcr int64 `json:"balance_ucr"`
		SpentUcr   int64 `json:"spent_ucr"`
		Calls      int64 `json:"calls"`
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		json.Unmarshal(getJSON(t, m.settleURL+"/v1/account", m.consumerKey), &acct)
		if acct.Calls >= want || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if acct.Calls != want {
		t.Fatalf("%d calls answered 200, %d billed", want, acct.Calls)
	}
	if acct.SpentUcr != totalUcr || acct.BalanceUcr != 5_000_000-totalUcr {
		t.Fatalf("the 200s cost %d µcr; spent %d, balance %d", totalUcr, acct.SpentUcr, acct.BalanceUcr)
	}
	t.Logf("%d calls billed exactly once across the crash; %d served on the credit line while settlement was down, %d refused",
		want, duringOutage, refused.Load())

	// The auditor's view: stop the peer, verify the chain and every balance.
	restarted.stop(syscall.SIGTERM)
	verify := func() ([]byte, error) {
		return exec.Command(binary, "ledger", "verify", "--data", m.dir("settle"), "--platform", m.platform).CombinedOutput()
	}
	if out, err := verify(); err != nil {
		t.Fatalf("ledger verify failed on an honest ledger: %v\n%s", err, out)
	}
	// One flipped byte in the store must not verify.
	flipOneByte(t, filepath.Join(m.dir("settle"), "ledger"))
	if out, err := verify(); err == nil {
		t.Fatalf("ledger verify passed on a tampered store:\n%s", out)
	}
}

// flipOneByte inverts a byte in the middle of the ledger's largest table
// file (or its write-ahead log when no table was written yet).
func flipOneByte(t *testing.T, dir string) {
	t.Helper()
	var target string
	var size int64
	for _, pattern := range []string{"*.sst", "*.log"} {
		files, _ := filepath.Glob(filepath.Join(dir, pattern))
		for _, f := range files {
			if st, err := os.Stat(f); err == nil && st.Size() > size {
				target, size = f, st.Size()
			}
		}
		if target != "" {
			break
		}
	}
	if target == "" {
		t.Fatalf("no table or log file in %s", dir)
	}
	data, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(target, data, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("flipped byte %d of %s", len(data)/2, filepath.Base(target))
}

// A gateway killed while its receipts wait for an unreachable settlement
// peer loses none of them: they are in its journal, and a restarted gateway
// delivers them once settlement is back.
func TestGatewayJournalSurvivesKill(t *testing.T) {
	m := startProcMesh(t, meshSpec{nodes: 1, capacity: 8, engineArgs: func(int) []string { return []string{"--rate", "0"} }})
	if r := m.call(chat(5, false)); r.status != 200 { // takes a credit line
		t.Fatalf("first call: %d %s", r.status, r.body)
	}
	settleArgs := []string{"settle", "--data", m.dir("settle"), "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", m.maddr,
		"--http", "127.0.0.1:0", "--signup-limit", "0"}
	waitCalls := func(n int64) int64 {
		var acct struct{ Calls int64 }
		deadline := time.Now().Add(20 * time.Second)
		for {
			json.Unmarshal(getJSON(t, m.settleURL+"/v1/account", m.consumerKey), &acct)
			if acct.Calls >= n || time.Now().After(deadline) {
				return acct.Calls
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if got := waitCalls(1); got != 1 {
		t.Fatalf("first call not billed: %d", got)
	}
	m.settle.stop(syscall.SIGTERM)
	os.Remove(filepath.Join(m.dir("settle"), "ready"))
	os.Remove(filepath.Join(m.dir("settle"), "http-addr"))
	served := int64(1)
	for range 10 {
		if r := m.call(chat(5, false)); r.status == 200 {
			served++
		}
	}
	if served < 5 {
		t.Fatalf("only %d calls served on the credit line during the outage", served)
	}
	m.gw.stop(syscall.SIGKILL) // receipts are only in the journal now
	os.Remove(filepath.Join(m.dir("gw"), "ready"))
	os.Remove(filepath.Join(m.dir("gw"), "http-addr"))

	settle := start(t, "settle-back", nil, settleArgs...)
	waitFile(t, settle, filepath.Join(m.dir("settle"), "ready"))
	m.settleURL = "http://" + waitFile(t, settle, filepath.Join(m.dir("settle"), "http-addr"))
	gw := start(t, "gateway-back", nil, m.gwArgs...)
	waitFile(t, gw, filepath.Join(m.dir("gw"), "ready"))
	if got := waitCalls(served); got != served {
		t.Fatalf("%d calls served, %d billed after the gateway came back", served, got)
	}
}
