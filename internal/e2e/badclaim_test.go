package e2e

import (
	"context"
	"crypto/rand"
	"path/filepath"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/openai/openai-go/v3"
	"github.com/tokenrouter/tokenrouter/internal/journal"
	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/nodecore/provider"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// The gateway does not check a node's claim signature on each call (the
// stream is authenticated to the node; settlement checks the signature).
// A node whose claim and claim-batch signatures are bad still answers the
// consumer, but settlement refuses its receipts for good: nobody pays or
// is paid, and the gateway's journal does not keep retrying them.
func TestBadClaimSignatureIsNotPaid(t *testing.T) {
	wrong, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	m := startMeshWith(t, launch.MeshOptions{Nodes: 1,
		Node: func(_ int, c *provider.Config) { c.ClaimKey = wrong }})
	ctx := context.Background()
	before := getAccount(t, m.GatewayURL, m.DemoKey)
	c := client(t, m, m.DemoKey)
	const calls = 3
	for range calls - 1 {
		resp, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:     "synthetic-1",
			Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("say something")},
			MaxTokens: openai.Int(8),
		})
		if err != nil {
			t.Fatalf("chat: %v", err)
		}
		if len(resp.Choices) != 1 || resp.Choices[0].Message.Content == "" || resp.Usage.CompletionTokens != 8 {
			t.Fatalf("answer: %+v", resp)
		}
	}
	stream := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model:     "synthetic-1",
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("stream please")},
		MaxTokens: openai.Int(8),
	})
	chunks := 0
	for stream.Next() {
		if ch := stream.Current(); len(ch.Choices) > 0 && ch.Choices[0].Delta.Content != "" {
			chunks++
		}
	}
	if err := stream.Err(); err != nil || chunks != 8 {
		t.Fatalf("stream: %d content chunks, err %v", chunks, err)
	}

	// The gateway flushes its receipts as it stops: every one must be
	// resolved (refused), none left pending for a retry.
	if err := m.Stop(); err != nil {
		t.Fatalf("mesh stopped with errors: %v", err)
	}
	j, err := journal.Open(filepath.Join(m.Dir, "gateway", "journal"))
	if err != nil {
		t.Fatal(err)
	}
	pending, err := j.Pending()
	j.Close()
	if err != nil || len(pending) != 0 {
		t.Fatalf("gateway journal still holds %d receipts (err %v); settlement refused them for good", len(pending), err)
	}
	bal := ledgerSumsToZero(t, m)
	if bal[m.DemoID] != before.BalanceUcr || before.BalanceUcr != economy.StartingCreditUcr {
		t.Fatalf("consumer balance %d, want %d untouched: %v", bal[m.DemoID], before.BalanceUcr, bal)
	}
	if bal[m.OperatorID] != economy.StartingCreditUcr || bal[ledger.AccountPlatform] != 0 {
		t.Fatalf("node operator %d, platform %d: a node with bad signatures was paid: %v",
			bal[m.OperatorID], bal[ledger.AccountPlatform], bal)
	}
}
