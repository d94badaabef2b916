package settlement

import (
	"testing"

	"github.com/tokenrouter/tokenrouter/p2p"
)

// A dispute is a node claiming more than its gateway billed, beyond the few
// tokens a client that left may not have received, or a node telling
// settlement another claim than it gave the gateway.
func TestDisputed(t *testing.T) {
	claim := p2p.NodeClaim{RequestID: "r", Model: "m", Node: "n", Gateway: "g", PromptTokens: 10, CompletionTokens: 100}
	receipt := func(c p2p.NodeClaim, prompt, completion int64) *p2p.Receipt {
		return &p2p.Receipt{RequestID: "r", Claim: c, PromptTokens: prompt, CompletionTokens: completion}
	}
	other := claim
	other.CompletionTokens = 300
	incomplete := claim
	incomplete.Incomplete = true
	for _, tc := range []struct {
		name     string
		r        *p2p.Receipt
		reported *pendingClaim
		want     bool
	}{
		{"agree", receipt(claim, 10, 100), nil, false},
		{"agree, the node reported the same", receipt(claim, 10, 100), &pendingClaim{R: receipt(claim, 10, 100)}, false},
		{"a client left a few tokens early", receipt(claim, 10, 95), nil, false},
		{"completion inflated", receipt(claim, 10, 30), nil, true},
		{"prompt inflated", receipt(claim, 4, 100), nil, true},
		{"two stories", receipt(claim, 10, 100), &pendingClaim{R: receipt(other, 10, 300)}, true},
		{"a checkpoint billed for a dead stream is no story", receipt(incomplete, 10, 100), &pendingClaim{R: receipt(other, 10, 300)}, false},
	} {
		if got := disputed(tc.r, tc.reported) != ""; got != tc.want {
			t.Errorf("%s: disputed %v, want %v", tc.name, got, tc.want)
		}
	}
}
