package gateway

import (
	"log/slog"
	"testing"

	"github.com/tokenrouter/tokenrouter/internal/openai"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// What a node claims is capped by what the gateway saw: prompt by request
// bytes, completion by the output delivered (4 bytes a character at most,
// one token a chunk at least) and by the output cap.
func TestBilledCapsClaimsByWhatWasDelivered(t *testing.T) {
	g := &Gateway{log: slog.New(slog.DiscardHandler)}
	rl := func(body string, meta openai.Meta) *relay {
		return &relay{c: &forwardCall{g: g, body: []byte(body), meta: meta}}
	}
	claim := func(p, c int64) p2p.NodeClaim { return p2p.NodeClaim{PromptTokens: p, CompletionTokens: c} }
	var hello delivery
	if !hello.add([]byte(`{"choices":[{"index":0,"delta":{"content":"hello"}}]}`)) || hello.add([]byte(`{"choices":[],"usage":{}}`)) {
		t.Fatal("delivery miscounts chunks with and without output")
	}
	for _, tc := range []struct {
		name         string
		r            *relay
		claim        p2p.NodeClaim
		out          delivery
		prompt, comp int64
	}{
		{"honest", rl(`{"model":"m","messages":[{"role":"user","content":"hi there"}]}`, openai.Meta{}), claim(5, 1), hello, 5, 1},
		{"prompt above the request's bytes", rl(`{"model":"m"}`, openai.Meta{}), claim(1000, 1), hello, 13, 1},
		{"output above what was shown", rl(`{}`, openai.Meta{}), claim(0, 500), hello, 0, 20},
		{"output above max_tokens", rl(`{}`, openai.Meta{MaxTokens: 3}), claim(0, 20), hello, 0, 3},
		{"nothing shown", rl(`{}`, openai.Meta{}), claim(0, 50), delivery{}, 0, 0},
		{"many one-token chunks", rl(`{}`, openai.Meta{}), claim(0, 300), delivery{chunks: 300, chars: 0}, 0, 300},
	} {
		p, c := tc.r.billed(tc.claim, tc.claim.CompletionTokens, tc.out)
		if p != tc.prompt || c != tc.comp {
			t.Errorf("%s: billed %d+%d, want %d+%d", tc.name, p, c, tc.prompt, tc.comp)
		}
	}
}
