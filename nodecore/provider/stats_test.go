package provider

import (
	"net/http"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/p2p"
)

// Every way a call ends lands in exactly one counter.
func TestCallStatsClassify(t *testing.T) {
	claim := p2p.NodeClaim{RequestID: "r", PromptTokens: 3, CompletionTokens: 10}
	broken := claim
	broken.Incomplete = true
	var s callStats
	for _, c := range []struct {
		done      bool
		status    int
		nodeFault bool
		claim     p2p.NodeClaim
	}{
		{done: true, status: http.StatusOK, claim: claim},  // served
		{done: true, status: http.StatusOK, claim: claim},  // served
		{done: true, status: http.StatusOK, claim: broken}, // the engine broke off: failed, tokens counted
		{status: http.StatusTooManyRequests},               // full
		{status: http.StatusBadGateway, nodeFault: true},   // failed
		{status: http.StatusBadRequest},                    // rejected: the consumer's
		{},                                                 // dropped: no answer at all
		{status: http.StatusOK, claim: claim},              // dropped: the trailer never left
		{status: http.StatusNotFound, nodeFault: true},     // failed: a model it does not serve
		{done: true, status: http.StatusOK, claim: p2p.NodeClaim{CompletionTokens: 1}}, // served
	} {
		s.ended(&call{
			req: p2p.InferRequest{Model: "llama3.2:latest"}, gw: "gw-1", done: c.done,
			outcome: callOutcome{status: c.status, nodeFault: c.nodeFault, claim: c.claim},
		})
	}
	want := CallStats{Total: 10, Served: 3, Failed: 3, Full: 1, Rejected: 1, Dropped: 2, PromptTokens: 9, CompletionTokens: 31}
	if s.calls != want {
		t.Fatalf("counters %+v, want %+v", s.calls, want)
	}
	if s.byModel["llama3.2"] != 3 {
		t.Fatalf("calls per model %v, want 3 for llama3.2 (canonical name)", s.byModel)
	}
	if len(s.gateways) != 1 {
		t.Fatalf("gateways %v", s.gateways)
	}
}

// Throughput counts the output of the last 10 s only.
func TestCallStatsThroughput(t *testing.T) {
	var s callStats
	t0 := time.Unix(1_000_000, 0)
	s.addTokens(t0, 100)
	s.addTokens(t0.Add(5*time.Second), 50)
	if got := s.throughput(t0.Add(5 * time.Second)); got != 15 {
		t.Fatalf("throughput %v, want 15 tok/s", got)
	}
	if got := s.throughput(t0.Add(12 * time.Second)); got != 5 {
		t.Fatalf("throughput 12 s on %v, want 5 tok/s (the first second has left the window)", got)
	}
	s.addTokens(t0.Add(20*time.Second), 10) // reuses the first second's bucket
	if got := s.throughput(t0.Add(20 * time.Second)); got != 1 {
		t.Fatalf("throughput 20 s on %v, want 1 tok/s", got)
	}
}

func TestSafeURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:11434/v1":                 "http://127.0.0.1:11434/v1",
		"https://user:s3cret@api.example.com/v1":    "https://user:xxxxx@api.example.com/v1",
		"https://api.example.com/v1?api-key=s3cret": "https://api.example.com/v1",
	} {
		if got := safeURL(in); got != want {
			t.Errorf("safeURL(%q) = %q, want %q", in, got, want)
		}
	}
}
