package main

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A node killed mid-stream still gets paid for what it delivered, up to its
// last claim during the stream (one a second), and the consumer pays no
// more than what reached it: the client's stream ends with one error
// event, and the books move by the same amount on both sides.
func TestNodeKilledMidStreamIsBilledForDelivered(t *testing.T) {
	prices := filepath.Join(t.TempDir(), "prices.yaml")
	// 1 µcr an output token (and a rounding µcr for the prompt): the cost says the tokens billed.
	os.WriteFile(prices, []byte("default:\n  input: 1\n  output: 1000000\n"), 0o600)
	m := startProcMesh(t, meshSpec{settleArgs: []string{"--prices", prices}, nodes: 1, capacity: 4,
		engineArgs: func(int) []string { return []string{"--rate", "100"} }})

	req, _ := http.NewRequest(http.MethodPost, m.gwURL+"/v1/chat/completions",
		strings.NewReader(`{"model":"synthetic-1","stream":true,"max_tokens":3000,"messages":[{"role":"user","content":"a long answer"}]}`))
	req.Header.Set("Authorization", "Bearer "+m.consumerKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("stream: %s", resp.Status)
	}
	var (
		delivered int64
		first     time.Time
		killed    bool
		events    []string
	)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		events = append(events, data)
		if strings.Contains(data, `"content":"`) && !strings.Contains(data, `"content":""`) {
			delivered++
			if first.IsZero() {
				first = time.Now()
			}
		}
		// 2.5 s in (about 250 tokens and two claims), the node dies.
		if !killed && !first.IsZero() && time.Since(first) > 2500*time.Millisecond {
			m.nodes[0].stop(syscall.SIGKILL)
			killed = true
		}
	}
	if !killed || len(events) < 2 || events[len(events)-1] != "[DONE]" {
		t.Fatalf("killed %v; the stream's last events: %q", killed, events[max(0, len(events)-2):])
	}
	var end struct {
		Choices []struct {
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Error *struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(events[len(events)-2]), &end); err != nil || end.Error == nil ||
		len(end.Choices) != 1 || end.Choices[0].FinishReason != "error" {
		t.Fatalf("the stream did not end with an error event: %s", events[len(events)-2])
	}

	var acct struct {
		Calls      int64 `json:"calls"`
		SpentUcr   int64 `json:"spent_ucr"`
		BalanceUcr int64 `json:"balance_ucr"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for acct.Calls != 1 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		json.Unmarshal(getJSON(t, m.settleURL+"/v1/account", m.consumerKey), &acct)
	}
	billed := acct.SpentUcr - 1 // output tokens
	if acct.Calls != 1 || billed < 100 || billed > delivered || acct.BalanceUcr != 5_000_000-acct.SpentUcr {
		t.Fatalf("a node killed after delivering %d tokens: %+v (want 100 to %d tokens billed)", delivered, acct, delivered)
	}
	var op struct {
		EarnedUcr int64 `json:"earned_ucr"`
	}
	json.Unmarshal(getJSON(t, m.settleURL+"/v1/account", m.operatorKey), &op)
	if op.EarnedUcr != acct.SpentUcr*8/10 {
		t.Fatalf("the operator earned %d of %d", op.EarnedUcr, acct.SpentUcr)
	}
	t.Logf("delivered %d tokens, billed %d", delivered, billed)
}
