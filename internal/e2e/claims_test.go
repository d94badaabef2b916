package e2e

import (
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/openai/openai-go/v3"
	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/nodecore/provider"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// claimStanding is what GET /v1/account shows of node claims.
type claimStanding struct {
	Disputes         int64 `json:"disputes"`
	UnreceiptedCalls int64 `json:"unreceipted_calls"`
}

func standing(t *testing.T, base, key string) claimStanding {
	t.Helper()
	var s claimStanding
	getJSONAs(t, base+"/v1/account", key, &s)
	return s
}

// A node that claims three times the tokens it served is billed at the
// gateway's count (what the consumer received), and each such call is a
// dispute on the consumer's and the operator's accounts. Its own reports of
// the inflated claims, which reach settlement too, bill nothing more once
// the claim grace has passed.
func TestInflatedClaimsAreBilledAtTheGatewaysCount(t *testing.T) {
	const grace = 2 * time.Second
	m := startMeshWith(t, launch.MeshOptions{Nodes: 1, ClaimGrace: grace,
		Node: func(_ int, c *provider.Config) {
			c.ClaimHook = func(cl *p2p.NodeClaim) { cl.CompletionTokens *= 3 }
		}})
	ctx := context.Background()
	c := client(t, m, m.DemoKey)
	const calls = 3
	var cost int64
	for range calls {
		resp, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:     "synthetic-1",
			Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("count for me")},
			MaxTokens: openai.Int(8),
		})
		if err != nil {
			t.Fatal(err)
		}
		if resp.Usage.CompletionTokens != 8 {
			t.Fatalf("billed %d completion tokens of 8 delivered", resp.Usage.CompletionTokens)
		}
		cost += costOf(t, resp.Usage.RawJSON())
	}
	a := waitCalls(t, m.SettleURL, m.DemoKey, calls)
	time.Sleep(grace + 1500*time.Millisecond) // the nodes' own reports had their chance
	a = getAccount(t, m.SettleURL, m.DemoKey)
	if a.Calls != calls || a.SpentUcr != cost {
		t.Fatalf("consumer after %d calls costing %d: %+v", calls, cost, a)
	}
	if s := standing(t, m.SettleURL, m.DemoKey); s.Disputes != calls || s.UnreceiptedCalls != 0 {
		t.Fatalf("consumer's standing: %+v, want %d disputes", s, calls)
	}
	if s := standing(t, m.SettleURL, m.OperatorKey); s.Disputes < calls {
		t.Fatalf("operator's standing: %+v, want %d disputes on its node", s, calls)
	}
	var nodes struct {
		Data []struct {
			Node     string `json:"node"`
			Disputes int64  `json:"disputes"`
		} `json:"data"`
	}
	getJSONAs(t, m.SettleURL+"/v1/nodes", m.OperatorKey, &nodes)
	if len(nodes.Data) != 1 || nodes.Data[0].Disputes != calls {
		t.Fatalf("GET /v1/nodes: %+v, want the node with %d disputes", nodes, calls)
	}
	m.Stop()
	ledgerSumsToZero(t, m)
}

// A node that invents claims for calls no gateway sent it charges no one:
// without a grant, or with a grant it signed itself, settlement refuses the
// claim, and the consumer it named pays nothing after the grace.
func TestInventedClaimsChargeNoOne(t *testing.T) {
	const grace = time.Second
	m := startMeshWith(t, launch.MeshOptions{Nodes: 1, ClaimGrace: grace})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h, err := p2p.NewHost(ctx, p2p.Config{DataDir: filepath.Join(t.TempDir(), "liar"),
		Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Bootstrap: []string{m.BootstrapAddr}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	platform, err := peer.Decode(m.PlatformID)
	if err != nil {
		t.Fatal(err)
	}
	consumer := getAccount(t, m.SettleURL, m.DemoKey)
	gw := m.NodeIDs[0] // any peer id will do as the "gateway"
	claim := p2p.NodeClaim{RequestID: "req_invented", Model: "synthetic-1", Node: h.IDString(), Gateway: gw, PromptTokens: 10, CompletionTokens: 500}
	auth, err := p2p.NewClaimAuth(h.Key, platform, h.ID(), platform)
	if err != nil {
		t.Fatal(err)
	}
	invented := func(g *p2p.Grant) *p2p.Receipt {
		return &p2p.Receipt{RequestID: claim.RequestID, Model: claim.Model, Consumer: consumer.Account, Node: claim.Node, Gateway: gw,
			PromptTokens: 10, CompletionTokens: 500, TimeMs: time.Now().UnixMilli(), Claim: claim, NodeMAC: auth.MAC(claim), Grant: g}
	}
	self, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	forged := &p2p.Grant{Account: consumer.Account, Gateway: gw, ExpiresMs: time.Now().Add(time.Hour).UnixMilli()}
	if err := forged.Sign(self); err != nil {
		t.Fatal(err)
	}
	var resp *p2p.SettleResponse
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err = h.CallSettle(ctx, platform, &p2p.SettleRequest{Op: p2p.OpClaims, Receipts: []*p2p.Receipt{invented(nil), invented(forged)}})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond) // the host is still finding the platform
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != 2 {
		t.Fatalf("results: %+v", resp.Results)
	}
	for i, r := range resp.Results {
		if r.Error == nil || r.Error.Code != p2p.CodeInvalid {
			t.Fatalf("invented claim %d accepted: %+v", i, r)
		}
	}
	time.Sleep(grace + 1500*time.Millisecond)
	if a := getAccount(t, m.SettleURL, m.DemoKey); a.BalanceUcr != consumer.BalanceUcr || a.Calls != 0 {
		t.Fatalf("the consumer paid for invented calls: %+v, was %+v", a, consumer)
	}
}

// The settlement peer's probes look like consumers' calls: they come from
// peer ids that are not the platform's and that rotate, with a req_ id, a
// grant the platform signed for that peer, a hold, and a real prompt; the
// node reports its claims for them as for any call, and no one is billed.
func TestProbesLookLikeConsumers(t *testing.T) {
	var mu sync.Mutex
	var calls []probeSeen
	m := startMeshWith(t, launch.MeshOptions{Nodes: 1, ClaimGrace: time.Second,
		ProbeEvery: 150 * time.Millisecond, ProbeRotate: time.Second,
		Node: func(_ int, c *provider.Config) {
			c.OnCall = func(from string, req p2p.InferRequest) {
				mu.Lock()
				calls = append(calls, probeSeen{from, req})
				mu.Unlock()
			}
		}})
	before := getAccount(t, m.SettleURL, m.DemoKey)
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		peers := map[string]bool{}
		for _, c := range calls {
			peers[c.from] = true
		}
		n := len(calls)
		mu.Unlock()
		if n >= 8 && len(peers) >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	platform, err := peer.Decode(m.PlatformID)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := platform.ExtractPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	seen := append([]probeSeen(nil), calls...)
	mu.Unlock()
	peers := map[string]bool{}
	for _, c := range seen {
		peers[c.from] = true
		r := c.req
		switch {
		case c.from == m.PlatformID:
			t.Fatalf("a probe came from the platform's own peer id")
		case !strings.HasPrefix(r.RequestID, "req_") || len(r.RequestID) != len(p2p.NewRequestID()):
			t.Fatalf("a probe's request id %q is not shaped like a gateway's", r.RequestID)
		case r.Grant == nil || r.Grant.Gateway != c.from || r.Hold == "":
			t.Fatalf("a probe without a grant for its own peer, or without a hold: %+v", r)
		case r.Grant.Verify(pub) != nil:
			t.Fatalf("a probe's grant is not the platform's")
		}
	}
	if len(seen) < 8 || len(peers) < 2 {
		t.Fatalf("%d probes from %d peer ids; want at least 8 from 2 (the identity rotates every second)", len(seen), len(peers))
	}
	t.Logf("%d probes from %d peer ids", len(seen), len(peers))
	time.Sleep(2500 * time.Millisecond) // the nodes' claims for the probes had their grace
	if a := getAccount(t, m.SettleURL, m.DemoKey); a != before {
		t.Fatalf("probes moved a consumer's balance: %+v, was %+v", a, before)
	}
	if a := getAccount(t, m.SettleURL, m.OperatorKey); a.EarnedUcr != 0 {
		t.Fatalf("probes were paid: %+v", a)
	}
	// ... because settlement knew them for its own, not because it could
	// not bill them: the node reported them, and they were set aside.
	resp, err := http.Get(m.SettleURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !regexp.MustCompile(`tokenrouter_settle_node_claims_total\{outcome="probe"\} [1-9]`).Match(metrics) {
		t.Fatalf("no probe claim was reported and set aside:\n%s", grepLines(metrics, "node_claims"))
	}
	m.Stop()
	ledgerSumsToZero(t, m)
}

type probeSeen struct {
	from string
	req  p2p.InferRequest
}

// grepLines returns the lines of b that hold s.
func grepLines(b []byte, s string) string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
