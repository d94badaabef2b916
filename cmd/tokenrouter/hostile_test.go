package main

import (
	"bufio"
	"encoding/json"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Issue 14, tried exactly as it was reported: a second max_tokens key in
// another case (or twice, or escaped) once got 300 tokens for the price of
// one, and the honest node was blamed. Now every such body is refused with
// a 400 naming the parameter, before any node sees it: nothing delivered,
// nothing billed, no node penalised. An honest call then costs what it
// should, so "nothing billed" is not the billing being off.
func TestHostileMaxTokensCurl(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed (.ci/run installs it): " + err.Error())
	}
	m := startProcMesh(t, meshSpec{nodes: 1, capacity: 8, engineArgs: func(int) []string { return []string{"--rate", "0"} }})
	curl := func(path, body string) (int, string) {
		t.Helper()
		// The reporter's line, with this mesh's gateway in place of 127.0.0.1:8080.
		line := `curl -s -w '\n%{http_code}' ` + m.gwURL + path + ` -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d '` + body + `'`
		cmd := exec.Command("sh", "-c", line)
		cmd.Env = append(cmd.Environ(), "KEY="+m.consumerKey)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		s := strings.TrimSpace(string(out))
		i := strings.LastIndexByte(s, '\n')
		code, _ := strconv.Atoi(s[i+1:])
		return code, s[:max(i, 0)]
	}
	hostile := []struct{ path, body, param string }{
		{"/v1/chat/completions", `{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"MAX_TOKENS":300}`, "MAX_TOKENS"},
		{"/v1/chat/completions", `{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"MAX_TOKENS":300,"stream":true}`, "MAX_TOKENS"},
		{"/v1/chat/completions", `{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"Max_tokens":300}`, "Max_tokens"},
		{"/v1/chat/completions", `{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"MAX_COMPLETION_TOKENS":300}`, "MAX_COMPLETION_TOKENS"},
		{"/v1/chat/completions", `{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"max_tokens":300}`, "max_tokens"},
		{"/v1/chat/completions", `{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"max\u005ftokens":300}`, "max_tokens"},
		{"/v1/completions", `{"model":"synthetic-1","prompt":"hi","max_tokens":1,"MAX_TOKENS":300}`, "MAX_TOKENS"},
		{"/v1/completions", `{"model":"synthetic-1","prompt":"hi","max_tokens":1,"Max_tokens":300,"stream":true}`, "Max_tokens"},
	}
	for _, h := range hostile {
		code, body := curl(h.path, h.body)
		var e struct {
			Error struct {
				Type  string  `json:"type"`
				Param *string `json:"param"`
			} `json:"error"`
			Choices json.RawMessage `json:"choices"`
		}
		if code != 400 || json.Unmarshal([]byte(body), &e) != nil || e.Error.Type != "invalid_request_error" ||
			e.Error.Param == nil || *e.Error.Param != h.param || e.Choices != nil {
			t.Fatalf("%s %s: %d %s; want 400 invalid_request_error naming %s", h.path, h.body, code, body, h.param)
		}
	}
	// Nothing reached a node: no stream to one was opened or reused.
	if n := metricSum(t, m.gwURL, "tokenrouter_gateway_node_streams_total"); n != 0 {
		t.Fatalf("%v calls reached a node", n)
	}
	// Nothing billed, once settlement had time to see it (2 s by SPEC §6).
	time.Sleep(2500 * time.Millisecond)
	acct := account(t, m.gwURL, m.consumerKey)
	if acct.BalanceUcr != 5_000_000 || acct.Calls != 0 {
		t.Fatalf("after hostile calls only: %+v", acct)
	}
	if in := m.instances()[m.nodeIDs[0]]; in.Breaker != "closed" || !in.Candidate {
		t.Fatalf("the node was penalised for the consumer's bodies: %+v", in)
	}
	// The honest call: one token asked, one billed, the balance moves by its cost.
	code, body := curl("/v1/chat/completions", `{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":1}`)
	var ok struct {
		Usage struct {
			CompletionTokens int64 `json:"completion_tokens"`
			CostUcr          int64 `json:"cost_ucr"`
		} `json:"usage"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &ok) != nil || ok.Usage.CompletionTokens != 1 || ok.Usage.CostUcr <= 0 {
		t.Fatalf("honest call: %d %s", code, body)
	}
	deadline := time.Now().Add(5 * time.Second)
	for acct = account(t, m.gwURL, m.consumerKey); acct.Calls < 1 && time.Now().Before(deadline); acct = account(t, m.gwURL, m.consumerKey) {
		time.Sleep(100 * time.Millisecond)
	}
	if acct.Calls != 1 || acct.BalanceUcr != 5_000_000-ok.Usage.CostUcr {
		t.Fatalf("after the honest call costing %d: %+v", ok.Usage.CostUcr, acct)
	}
	if n := metricSum(t, m.gwURL, "tokenrouter_gateway_node_streams_total"); n != 1 {
		t.Fatalf("the honest call ran on %v streams to nodes, want 1", n)
	}
}

// accountView is GET /v1/account's integers.
type accountView struct {
	BalanceUcr int64 `json:"balance_ucr"`
	SpentUcr   int64 `json:"spent_ucr"`
	Calls      int64 `json:"calls"`
}

func account(t *testing.T, gwURL, key string) accountView {
	t.Helper()
	var a accountView
	if err := json.Unmarshal(getJSON(t, gwURL+"/v1/account", key), &a); err != nil {
		t.Fatal(err)
	}
	return a
}

// metricSum adds up every series of a counter on a role's /metrics.
func metricSum(t *testing.T, baseURL, name string) float64 {
	t.Helper()
	body := getJSON(t, baseURL+"/metrics", "")
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}
