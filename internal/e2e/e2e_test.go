// Package e2e runs the whole mesh — bootstrap, settlement, synthetic
// engines with their nodes, a gateway — as real libp2p peers on loopback in
// this process, and calls it with the official openai-go client.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

func startMesh(t *testing.T, nodes int) *launch.Mesh {
	t.Helper()
	return startMeshWith(t, launch.MeshOptions{Nodes: nodes})
}

// startMeshWith starts a mesh with o, in a temporary directory and logging
// warnings to the test log unless o says otherwise; it stops with the test.
func startMeshWith(t *testing.T, o launch.MeshOptions) *launch.Mesh {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	m, err := launch.StartMesh(ctx, o)
	if err != nil {
		t.Fatalf("start mesh: %v", err)
	}
	t.Cleanup(func() { m.Stop() })
	return m
}

// testWriter sends the mesh's warnings to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// client is the official openai-go client on the mesh's gateway. Every
// response it gets is checked against OpenAI's schemas on the way.
func client(t *testing.T, m *launch.Mesh, key string, opts ...option.RequestOption) openai.Client {
	return openai.NewClient(append([]option.RequestOption{
		option.WithBaseURL(m.GatewayURL + "/v1"), option.WithAPIKey(key), option.WithMaxRetries(0),
		option.WithMiddleware(validating(t)),
	}, opts...)...)
}

// costOf reads usage.cost_ucr from a raw usage object.
func costOf(t *testing.T, rawUsage string) int64 {
	t.Helper()
	var u struct {
		CostUcr *int64   `json:"cost_ucr"`
		Cost    *float64 `json:"cost"`
	}
	if err := json.Unmarshal([]byte(rawUsage), &u); err != nil || u.CostUcr == nil || u.Cost == nil {
		t.Fatalf("usage without cost_ucr/cost: %s (%v)", rawUsage, err)
	}
	if got := int64(*u.Cost*economy.UcrPerCredit + 0.5); got != *u.CostUcr {
		t.Fatalf("cost %v credits does not match cost_ucr %d", *u.Cost, *u.CostUcr)
	}
	return *u.CostUcr
}

type account struct {
	Account    string `json:"account"`
	BalanceUcr int64  `json:"balance_ucr"`
	EarnedUcr  int64  `json:"earned_ucr"`
	SpentUcr   int64  `json:"spent_ucr"`
	Calls      int64  `json:"calls"`
	Starting   int64  `json:"starting_credit_ucr"`
}

func getAccount(t *testing.T, base, key string) account {
	t.Helper()
	var a account
	getJSONAs(t, base+"/v1/account", key, &a)
	return a
}

// getJSONAs GETs url with key as the bearer key, wants a 200, and decodes
// the answer into v.
func getJSONAs(t *testing.T, url, key string, v any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s %s", url, resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// waitCalls polls the gateway's /v1/account until calls reaches n.
func waitCalls(t *testing.T, base, key string, n int64) account {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		a := getAccount(t, base, key)
		if a.Calls >= n || time.Now().After(deadline) {
			return a
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestPaidCallsSettleEndToEnd(t *testing.T) {
	m := startMesh(t, 2)
	ctx := context.Background()
	c := client(t, m, m.DemoKey)
	before := getAccount(t, m.GatewayURL, m.DemoKey)
	if before.BalanceUcr != economy.StartingCreditUcr || before.Starting != economy.StartingCreditUcr {
		t.Fatalf("new account: %+v, want the 5-credit starting grant", before)
	}

	var total int64
	var calls int64
	nodes := map[string]bool{}

	// Non-streamed chat.
	for range 4 {
		var raw *http.Response
		resp, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:     "synthetic-1",
			Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("say something")},
			MaxTokens: openai.Int(12),
		}, option.WithResponseInto(&raw))
		if err != nil {
			t.Fatalf("chat: %v", err)
		}
		if len(resp.Choices) != 1 || strings.TrimSpace(resp.Choices[0].Message.Content) == "" {
			t.Fatalf("no content: %+v", resp)
		}
		if resp.Usage.CompletionTokens != 12 || resp.Usage.PromptTokens == 0 {
			t.Fatalf("usage %+v, want 12 completion tokens", resp.Usage)
		}
		cost := costOf(t, resp.Usage.RawJSON())
		want := economy.Cost(economy.DefaultPriceTable().For("synthetic-1"), resp.Usage.PromptTokens, resp.Usage.CompletionTokens)
		if cost != want || cost <= 0 {
			t.Fatalf("cost_ucr %d, want %d (> 0)", cost, want)
		}
		if raw.Header.Get("x-tokenrouter-request-id") == "" || raw.Header.Get("x-tokenrouter-node") == "" {
			t.Fatalf("missing tokenrouter headers: %v", raw.Header)
		}
		nodes[raw.Header.Get("x-tokenrouter-node")] = true
		total += cost
		calls++
	}

	// Streamed chat, usage asked for: the last chunk carries usage with the cost.
	for range 3 {
		stream := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model:         "synthetic-1",
			Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("stream please")},
			MaxTokens:     openai.Int(20),
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
		})
		var text strings.Builder
		var usageRaw string
		var contentChunks int
		for stream.Next() {
			ch := stream.Current()
			if len(ch.Choices) > 0 && ch.Choices[0].Delta.Content != "" {
				text.WriteString(ch.Choices[0].Delta.Content)
				contentChunks++
			}
			if ch.JSON.Usage.Valid() && ch.Usage.TotalTokens > 0 {
				usageRaw = ch.Usage.RawJSON()
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("stream: %v", err)
		}
		if contentChunks != 20 || text.Len() == 0 {
			t.Fatalf("got %d content chunks (%q), want 20", contentChunks, text.String())
		}
		if usageRaw == "" {
			t.Fatal("no usage chunk although include_usage was asked")
		}
		total += costOf(t, usageRaw)
		calls++
	}

	// Streamed chat without include_usage: billed all the same, but the client
	// sees no usage chunk.
	stream := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model:     "synthetic-1",
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("no usage for me")},
		MaxTokens: openai.Int(5),
	})
	for stream.Next() {
		if ch := stream.Current(); ch.JSON.Usage.Valid() && ch.Usage.TotalTokens > 0 {
			t.Fatalf("usage chunk sent though the client did not ask: %s", ch.RawJSON())
		}
	}
	if err := stream.Err(); err != nil {
		var apiErr *openai.Error
		if errors.As(err, &apiErr) {
			req, _ := http.NewRequest(http.MethodGet, m.GatewayURL+"/debug/instances", nil)
			req.Header.Set("Authorization", "Bearer "+m.DemoKey)
			resp, _ := http.DefaultClient.Do(req)
			dbg, _ := io.ReadAll(resp.Body)
			t.Fatalf("stream: %v: %s\n%s", err, apiErr.RawJSON(), dbg)
		}
		t.Fatalf("stream: %v", err)
	}
	calls++
	// Its cost is what the engine counted: 4 prompt words + 1 per message, 5 completion.
	total += economy.Cost(economy.DefaultPriceTable().For("synthetic-1"), 5, 5)

	after := waitCalls(t, m.GatewayURL, m.DemoKey, calls)
	if after.Calls != calls {
		t.Fatalf("calls %d, want %d", after.Calls, calls)
	}
	if moved := before.BalanceUcr - after.BalanceUcr; moved != total {
		t.Fatalf("balance moved by %d µcr, the calls cost %d", moved, total)
	}
	if after.SpentUcr != total {
		t.Fatalf("spent %d, want %d", after.SpentUcr, total)
	}
	op := getAccount(t, m.GatewayURL, m.OperatorKey)
	if op.Calls != 0 || op.SpentUcr != 0 {
		t.Fatalf("operator account paid for calls: %+v", op)
	}
	if len(nodes) < 1 {
		t.Fatal("no node served")
	}

	// Stop the mesh and audit the ledger itself: provider + platform = spent,
	// and the books sum to zero.
	if err := m.Stop(); err != nil {
		t.Fatalf("mesh stopped with errors: %v", err)
	}
	bal := ledgerSumsToZero(t, m)
	provider := bal[m.OperatorID] - economy.StartingCreditUcr
	if provider != op.EarnedUcr {
		t.Fatalf("operator balance grew by %d but earned says %d", provider, op.EarnedUcr)
	}
	// The platform's 20% is split between what it keeps and the bounty pool it funds.
	if provider+bal[ledger.AccountPlatform]+bal[ledger.AccountBountyPool] != total {
		t.Fatalf("provider %d + platform %d + pool %d != consumer spent %d", provider, bal[ledger.AccountPlatform], bal[ledger.AccountBountyPool], total)
	}
	if provider > total*8/10 || provider < total*8/10-calls { // floor per call; the platform owns remainders
		t.Fatalf("provider got %d of %d, want ~80%%", provider, total)
	}
}

func TestOtherEndpoints(t *testing.T) {
	m := startMesh(t, 1)
	ctx := context.Background()
	c := client(t, m, m.DemoKey)
	comp, err := c.Completions.New(ctx, openai.CompletionNewParams{
		Model:     openai.CompletionNewParamsModel("synthetic-1"),
		Prompt:    openai.CompletionNewParamsPromptUnion{OfString: openai.String("once upon a time")},
		MaxTokens: openai.Int(7),
	})
	if err != nil {
		t.Fatalf("completions: %v", err)
	}
	if comp.Usage.CompletionTokens != 7 || comp.Choices[0].Text == "" {
		t.Fatalf("completion: %+v", comp)
	}
	costOf(t, comp.Usage.RawJSON())

	emb, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{
		Model: "synthetic-1",
		Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("embed me please")},
	})
	if err != nil {
		t.Fatalf("embeddings: %v", err)
	}
	if len(emb.Data) != 1 || len(emb.Data[0].Embedding) == 0 || emb.Usage.PromptTokens == 0 {
		t.Fatalf("embedding: %+v", emb)
	}
	if cost := costOf(t, emb.Usage.RawJSON()); cost <= 0 {
		t.Fatalf("embeddings billed %d", cost)
	}

	models, err := c.Models.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(models.Data) != 1 || models.Data[0].ID != "synthetic-1" || models.Data[0].Object != "model" {
		t.Fatalf("models: %+v", models.Data)
	}
	var extra struct {
		Instances []struct {
			Node string `json:"node"`
		} `json:"instances"`
		Price struct {
			Input, Output int64
		} `json:"price"`
	}
	json.Unmarshal([]byte(models.Data[0].RawJSON()), &extra)
	if len(extra.Instances) != 1 || extra.Instances[0].Node != m.NodeIDs[0] || extra.Price.Output <= 0 {
		t.Fatalf("model entry lacks instances/price: %s", models.Data[0].RawJSON())
	}
	a := waitCalls(t, m.GatewayURL, m.DemoKey, 2)
	if a.Calls != 2 {
		t.Fatalf("calls %d, want 2", a.Calls)
	}

	// The settlement peer lists the account's transfers, newest first, paged;
	// transfer ids derive from the request id and the leg.
	type txPage struct {
		Object string `json:"object"`
		Data   []struct {
			ID     string `json:"id"`
			From   string `json:"from"`
			To     string `json:"to"`
			Amount int64  `json:"amount_ucr"`
			Kind   string `json:"kind"`
		} `json:"data"`
		HasMore    bool   `json:"has_more"`
		NextCursor string `json:"next_cursor"`
	}
	var page txPage
	getSettleAs := func(key, path string, out any) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, m.SettleURL+path, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("GET %s: %s %s", path, resp.Status, b)
		}
		json.NewDecoder(resp.Body).Decode(out)
	}
	getSettle := func(path string, out any) { t.Helper(); getSettleAs(m.DemoKey, path, out) }
	getSettle("/v1/account/transactions?limit=2", &page)
	if page.Object != "list" || len(page.Data) != 2 || !page.HasMore || page.NextCursor == "" {
		t.Fatalf("first page: %+v", page)
	}
	var all []string
	for _, tx := range page.Data {
		all = append(all, tx.ID)
	}
	getSettle("/v1/account/transactions?limit=100&cursor="+page.NextCursor, &page)
	for _, tx := range page.Data {
		all = append(all, tx.ID)
	}
	// 2 calls x (provider, platform) + the starting grant.
	if len(all) != 5 || !strings.HasPrefix(all[0], "call/12D3KooW") || !strings.HasSuffix(all[0], "/provider") && !strings.HasSuffix(all[0], "/platform") {
		t.Fatalf("transactions: %v", all)
	}

	var bounties struct {
		Object  string            `json:"object"`
		PoolUcr int64             `json:"pool_ucr"`
		Data    []json.RawMessage `json:"data"`
	}
	getSettle("/v1/bounties", &bounties)

	var network struct {
		Data []struct {
			Model     string `json:"model"`
			Instances int    `json:"instances"`
			Capacity  int    `json:"capacity"`
		} `json:"data"`
	}
	getSettle("/v1/network", &network)

	var nodes struct {
		Data []struct {
			Node string `json:"node"`
		} `json:"data"`
	}
	getSettleAs(m.OperatorKey, "/v1/nodes", &nodes)
	if len(nodes.Data) != 1 || nodes.Data[0].Node != m.NodeIDs[0] {
		t.Fatalf("the operator's nodes: %+v", nodes)
	}
	if len(network.Data) != 1 || network.Data[0].Model != "synthetic-1" || network.Data[0].Instances != 1 || network.Data[0].Capacity <= 0 {
		t.Fatalf("network view: %+v", network)
	}
	if bounties.Object != "list" || bounties.PoolUcr <= 0 || bounties.Data == nil {
		t.Fatalf("bounties: %+v (the pool is funded from the platform's share of every call)", bounties)
	}
}

// Errors come back in OpenAI's shape with the right status and code.
func TestErrors(t *testing.T) {
	m := startMesh(t, 1)
	ctx := context.Background()
	params := openai.ChatCompletionNewParams{
		Model:    "synthetic-1",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	}
	var apiErr *openai.Error

	bad := client(t, m, "trk_notakey")
	_, err := bad.Chat.Completions.New(ctx, params)
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 401 || apiErr.Code != "invalid_api_key" {
		t.Fatalf("bad key: %v", err)
	}
	params.Model = "no-such-model"
	c := client(t, m, m.DemoKey)
	_, err = c.Chat.Completions.New(ctx, params)
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != "model_not_found" {
		t.Fatalf("unknown model: %v", err)
	}

	cases := []struct {
		name, body string
		key        string
		status     int
		code       string
	}{
		{"malformed json", `{"model":`, m.DemoKey, 400, "invalid_json"},
		{"no model", `{"messages":[{"role":"user","content":"x"}]}`, m.DemoKey, 400, "missing_required_parameter"},
		{"no key", `{}`, "", 401, "invalid_api_key"},
		{"engine-side validation", `{"model":"synthetic-1","messages":[]}`, m.DemoKey, 400, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, m.GatewayURL+"/v1/chat/completions", bytes.NewBufferString(tc.body))
			if tc.key != "" {
				req.Header.Set("Authorization", "Bearer "+tc.key)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e struct {
				Error *struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Param   *string `json:"param"`
					Code    *string `json:"code"`
				} `json:"error"`
			}
			raw, _ := io.ReadAll(resp.Body)
			if err := json.Unmarshal(raw, &e); err != nil || e.Error == nil || e.Error.Message == "" || e.Error.Type == "" {
				t.Fatalf("not OpenAI's error shape: %s", raw)
			}
			if resp.StatusCode != tc.status || (tc.code != "" && (e.Error.Code == nil || *e.Error.Code != tc.code)) {
				t.Fatalf("got %d %s, want %d %s", resp.StatusCode, raw, tc.status, tc.code)
			}
			if resp.Header.Get("x-tokenrouter-request-id") == "" {
				t.Fatal("error without x-tokenrouter-request-id")
			}
		})
	}
	// None of that was billed.
	if a := getAccount(t, m.GatewayURL, m.DemoKey); a.Calls != 0 || a.BalanceUcr != economy.StartingCreditUcr {
		t.Fatalf("errors were billed: %+v", a)
	}
}

// ledgerSumsToZero opens the mesh's ledger (the mesh stopped) and checks
// that every balance sums to zero; it returns the balances.
func ledgerSumsToZero(t *testing.T, m *launch.Mesh) map[string]int64 {
	t.Helper()
	led, err := ledger.Open(filepath.Join(m.Dir, "settle", "ledger"), ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer led.Close()
	bal, err := led.Balances()
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, b := range bal {
		sum += b
	}
	if sum != 0 {
		t.Fatalf("balances sum to %d, want 0: %v", sum, bal)
	}
	return bal
}
