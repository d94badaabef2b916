package main

import (
	"bufio"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Three idle identical nodes share sequential calls: ties are random, never
// first-listed, and the gateway's own finished calls do not linger as load.
func TestRoutingSharesSequentialCalls(t *testing.T) {
	m := startProcMesh(t, meshSpec{nodes: 3, capacity: 8, engineArgs: func(int) []string { return []string{"--rate", "0"} }})
	counts := map[string]int{}
	for i := range 90 {
		r := m.call(chat(4, false))
		if r.status != 200 {
			t.Fatalf("call %d: %d %s", i, r.status, r.body)
		}
		counts[r.node]++
	}
	for _, id := range m.nodeIDs {
		if counts[id] < 15 {
			t.Fatalf("90 sequential calls over 3 idle nodes: %v (each needs >= 15)", counts)
		}
	}
	t.Logf("shares: %v", counts)
}

// A burst of concurrent streams spreads instead of piling onto the node
// that looked idle a moment ago.
func TestRoutingSpreadsConcurrentStreams(t *testing.T) {
	m := startProcMesh(t, meshSpec{nodes: 3, capacity: 100, engineArgs: func(int) []string { return []string{"--rate", "20"} }})
	const n = 24
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for range n {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodPost, m.gwURL+"/v1/chat/completions", strings.NewReader(chat(20, true)))
			req.Header.Set("Authorization", "Bearer "+m.consumerKey)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err.Error()
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				errs <- resp.Status
				return
			}
			sc := bufio.NewScanner(resp.Body)
			done := false
			for sc.Scan() {
				done = done || sc.Text() == "data: [DONE]"
			}
			if !done {
				errs <- "stream without [DONE]"
				return
			}
			mu.Lock()
			counts[resp.Header.Get("x-tokenrouter-node")]++
			mu.Unlock()
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatalf("a stream failed: %s", e)
	}
	for id, c := range counts {
		if c > 12 {
			t.Fatalf("%d of %d concurrent streams went to %s: %v", c, n, id, counts)
		}
	}
	if len(counts) != 3 {
		t.Fatalf("streams did not reach every node: %v", counts)
	}
	t.Logf("spread: %v", counts)
}

// A node whose engine fails every call is parked after 3 failures without
// the client seeing an error (failover), gets no traffic while parked, and
// is readmitted by a single probe once its engine is fixed.
func TestRoutingBreakerParksAndProbeReadmits(t *testing.T) {
	m := startProcMesh(t, meshSpec{nodes: 2, capacity: 8, engineArgs: func(i int) []string {
		if i == 0 {
			return []string{"--rate", "0", "--fail-rate", "1"}
		}
		return []string{"--rate", "0"}
	}})
	bad := m.nodeIDs[0]
	for i := 0; m.instances()[bad].Breaker != "open"; i++ {
		if i > 60 {
			t.Fatalf("the failing node was never parked: %+v", m.instances()[bad])
		}
		if r := m.call(chat(3, false)); r.status != 200 || r.node == bad {
			t.Fatalf("call %d: %d from %s (%s); failover should hide the bad node", i, r.status, r.node, r.body)
		}
	}
	parkedAt := time.Now()
	// Fix the engine: restart it on the same address without --fail-rate.
	m.engines[0].stop(syscall.SIGTERM)
	m.startEngine(0, m.engineAddrs[0], "--rate", "0")

	// While parked (15 s) the node gets nothing.
	for time.Since(parkedAt) < 13*time.Second {
		if r := m.call(chat(3, false)); r.status != 200 || r.node == bad {
			t.Fatalf("while parked: %d from %s", r.status, r.node)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Then one probe readmits it, and it shares traffic again.
	deadline := time.Now().Add(20 * time.Second)
	served := 0
	for served < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("the fixed node was not readmitted: %+v", m.instances()[bad])
		}
		r := m.call(chat(3, false))
		if r.status != 200 {
			t.Fatalf("after the fix: %d %s", r.status, r.body)
		}
		if r.node == bad {
			served++
		}
	}
	if in := m.instances()[bad]; in.Breaker != "closed" {
		t.Fatalf("readmitted node's breaker: %+v", in)
	}
}

// Consumer mistakes never count against a node: a flood of requests the
// engine refuses with 400 parks nobody.
func TestRoutingBadInputNeverParks(t *testing.T) {
	m := startProcMesh(t, meshSpec{nodes: 2, capacity: 8, engineArgs: func(int) []string { return []string{"--rate", "0"} }})
	bad := []string{
		`{"model":"synthetic-1","messages":[{"role":"user","content":"x"}],"max_tokens":0}`,      // the engine refuses
		`{"model":"synthetic-1","messages":[],"max_tokens":5}`,                                   // the engine refuses
		`{"model":"synthetic-1","messages":[{"role":"user","content":"x"}],"max_tokens":999999}`, // the engine refuses
		`{"model":"synthetic-1","messages":`,                                                     // the gateway refuses
	}
	for i := range 60 {
		r := m.call(bad[i%len(bad)])
		if r.status != 400 || !strings.Contains(r.body, `"error"`) {
			t.Fatalf("bad request %d: %d %s", i, r.status, r.body)
		}
	}
	for _, id := range m.nodeIDs {
		if in := m.instances()[id]; in.Breaker != "closed" || !in.Candidate {
			t.Fatalf("a node was penalised for consumer mistakes: %+v", in)
		}
	}
	if r := m.call(chat(3, false)); r.status != 200 {
		t.Fatalf("good call after the flood: %d %s", r.status, r.body)
	}
}

// Calls waiting on a node that is killed before it answers are retried on
// another node; the client never sees an error.
func TestRoutingKilledNodeFailsOver(t *testing.T) {
	m := startProcMesh(t, meshSpec{nodes: 2, capacity: 100, engineArgs: func(i int) []string {
		if i == 0 {
			return []string{"--rate", "0", "--ttft", "4000"} // node 0 answers slowly
		}
		return []string{"--rate", "0"}
	}})
	const n = 8
	results := make(chan callResult, n)
	for range n {
		go func() { results <- m.call(chat(3, false)) }()
	}
	// Let the calls spread and wait on node 0, then kill it.
	deadline := time.Now().Add(5 * time.Second)
	for m.instances()[m.nodeIDs[0]].Spare >= 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	m.nodes[0].stop(syscall.SIGKILL)
	for range n {
		r := <-results
		if r.status != 200 || r.node != m.nodeIDs[1] {
			t.Fatalf("a call on the killed node reached the client as %d from %s: %s", r.status, r.node, r.body)
		}
	}
	for range 5 {
		if r := m.call(chat(3, false)); r.status != 200 || r.node != m.nodeIDs[1] {
			t.Fatalf("after the kill: %d from %s", r.status, r.node)
		}
	}
}

// A call whose worst case the account cannot cover is refused with 402
// before any node works on it; a smaller one still goes through.
func TestInsufficientCredits(t *testing.T) {
	prices := filepath.Join(t.TempDir(), "prices.yaml")
	// Output at 0.1 credit a token: 5 credits cover 50 tokens.
	os.WriteFile(prices, []byte("default:\n  input: 1\n  output: 100000000000\n"), 0o600)
	m := startProcMesh(t, meshSpec{settleArgs: []string{"--prices", prices}, nodes: 1, capacity: 8,
		engineArgs: func(int) []string { return []string{"--rate", "0"} }})
	r := m.call(chat(100, false))
	if r.status != 402 || !strings.Contains(r.body, `"insufficient_credits"`) {
		t.Fatalf("a call beyond the balance: %d %s", r.status, r.body)
	}
	if r := m.call(chat(10, false)); r.status != 200 {
		t.Fatalf("a call within the balance: %d %s", r.status, r.body)
	}
}
