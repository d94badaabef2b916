package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
	"github.com/tokenrouter/tokenrouter/gateway"
	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// validating returns openai-go middleware that checks every response the
// gateway gives against OpenAI's own schemas (every streamed chunk too)
// and that it carries x-tokenrouter-request-id.
func validating(t *testing.T) option.Middleware {
	schema := schemas(t)
	return func(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
		resp, err := next(req)
		if err != nil {
			return resp, err
		}
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(body))
		if rerr != nil {
			return resp, nil // a stream the test cut short: nothing whole to check
		}
		if resp.Header.Get("x-tokenrouter-request-id") == "" {
			t.Errorf("%s %s: no x-tokenrouter-request-id", req.Method, req.URL.Path)
		}
		path := strings.TrimPrefix(req.URL.Path, "/v1")
		var name string
		switch {
		case resp.StatusCode >= 400:
			name = "ErrorResponse"
		case strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream"):
			chunk := "CreateChatCompletionStreamResponse"
			if path == "/completions" {
				chunk = "CreateCompletionResponse"
			}
			sc := bufio.NewScanner(bytes.NewReader(body))
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				data, ok := strings.CutPrefix(sc.Text(), "data: ")
				if !ok || data == "[DONE]" {
					continue
				}
				if hasKey(data, "error") {
					continue // the one error event (finish_reason "error", as OpenRouter sends) is checked by the tests that cause it
				}
				if path == "/completions" {
					data = streamedCompletion(data)
				}
				if err := validate(schema(chunk), []byte(data)); err != nil {
					t.Errorf("%s chunk: %v", path, err)
				}
			}
			return resp, nil
		case path == "/chat/completions":
			name = "CreateChatCompletionResponse"
		case path == "/completions":
			name = "CreateCompletionResponse"
		case path == "/embeddings":
			name = "CreateEmbeddingResponse"
		case path == "/models":
			name = "ListModelsResponse"
		case strings.HasPrefix(path, "/models/"):
			name = "Model"
		default:
			return resp, nil
		}
		if err := validate(schema(name), body); err != nil {
			t.Errorf("%s %s (%d): %v", req.Method, path, resp.StatusCode, err)
		}
		return resp, nil
	}
}

// streamedCompletion fits a streamed completion chunk to the only schema
// OpenAI publishes for it, that of the whole response: OpenAI's own streams
// send "finish_reason": null until the last chunk and "usage": null, which
// that schema does not allow. Both are what OpenAI sends; nothing else is
// relaxed.
func streamedCompletion(data string) string {
	var obj map[string]any
	if json.Unmarshal([]byte(data), &obj) != nil {
		return data
	}
	if u, ok := obj["usage"]; ok && u == nil {
		delete(obj, "usage")
	}
	choices, _ := obj["choices"].([]any)
	for _, c := range choices {
		if c, ok := c.(map[string]any); ok && c["finish_reason"] == nil {
			c["finish_reason"] = "stop"
		}
	}
	b, _ := json.Marshal(obj)
	return string(b)
}

// hasKey reports whether a JSON object has a non-null top-level key.
func hasKey(doc, key string) bool {
	var obj map[string]json.RawMessage
	return json.Unmarshal([]byte(doc), &obj) == nil && len(obj[key]) > 0 && string(obj[key]) != "null"
}

// newAccount signs up a fresh consumer account on the settlement peer.
func newAccount(t *testing.T, m *launch.Mesh) string {
	t.Helper()
	resp, err := http.Post(m.SettleURL+"/v1/accounts", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a launch.AccountResponse
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || a.APIKey == "" {
		t.Fatalf("signup: %s %v", resp.Status, err)
	}
	return a.APIKey
}

// engineProbe is a real synthetic engine behind a recorder: it keeps every
// request body, counts the SSE events it writes, knows when a generation
// ends, and can break a stream off after cut events (an engine crashing
// mid-answer).
type engineProbe struct {
	srv    *httptest.Server
	events atomic.Int64 // data: events written, across calls
	active atomic.Int64 // generations running
	cut    int64        // > 0: abort every stream after this many events

	mu     sync.Mutex
	bodies [][]byte
	ended  []time.Time
}

func newEngineProbe(t *testing.T, model string, rate float64, cut int64, tune ...func(*engine.SyntheticConfig)) *engineProbe {
	t.Helper()
	cfg := engine.DefaultSyntheticConfig()
	cfg.Models, cfg.Rate = []string{model}, rate
	for _, f := range tune {
		f(&cfg)
	}
	syn, err := engine.NewSynthetic(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := &engineProbe{cut: cut}
	h := syn.Handler()
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			p.mu.Lock()
			p.bodies = append(p.bodies, body)
			p.mu.Unlock()
			p.active.Add(1)
			defer func() {
				p.active.Add(-1)
				p.mu.Lock()
				p.ended = append(p.ended, time.Now())
				p.mu.Unlock()
			}()
		}
		h.ServeHTTP(&probeWriter{ResponseWriter: w, p: p}, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *engineProbe) lastBody() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.bodies) == 0 {
		return nil
	}
	return p.bodies[len(p.bodies)-1]
}

func (p *engineProbe) lastEnd() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.ended) == 0 {
		return time.Time{}
	}
	return p.ended[len(p.ended)-1]
}

type probeWriter struct {
	http.ResponseWriter
	p     *engineProbe
	count int64
}

func (w *probeWriter) Write(b []byte) (int, error) {
	n := int64(bytes.Count(b, []byte("data: ")))
	if w.p.cut > 0 && w.count+n > w.p.cut {
		panic(http.ErrAbortHandler) // the engine dies mid-stream: the connection drops without an end
	}
	w.count += n
	w.p.events.Add(n)
	return w.ResponseWriter.Write(b)
}

func (w *probeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// addNode starts one more node, for the mesh's operator, in front of an
// engine, and waits until the gateway sees it.
func addNode(t *testing.T, m *launch.Mesh, upstream string, instances int) {
	t.Helper()
	runNode(t, m, upstream, m.PlatformID, m.OperatorKey)
	if err := launch.WaitInstances(context.Background(), m.GatewayURL, m.DemoKey, instances, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

// runNode starts a node in front of an engine, settling with platform and
// earning for the account of accountKey (none: ""), and returns its peer
// id once it serves.
func runNode(t *testing.T, m *launch.Mesh, upstream, platform, accountKey string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	done := make(chan error, 1)
	go func() {
		done <- launch.Node(ctx, launch.NodeOptions{
			Common:   launch.Common{Data: dir, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Bootstrap: []string{m.BootstrapAddr}},
			Platform: platform, Upstream: upstream + "/v1", AccountKey: accountKey, Synthetic: true,
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("node stopped: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("node not ready in 30s")
		}
	}
	id, err := launch.ReadFirstLine(filepath.Join(dir, "peer-id"))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// The rest of the surface through the official client: streamed
// completions with and without usage, and one model by id.
func TestStreamedCompletionsAndModelByID(t *testing.T) {
	m := startMesh(t, 1)
	ctx := context.Background()
	c := client(t, m, m.DemoKey)
	var want int64
	for _, usage := range []bool{true, false} {
		p := openai.CompletionNewParams{
			Model:     openai.CompletionNewParamsModel("synthetic-1"),
			Prompt:    openai.CompletionNewParamsPromptUnion{OfString: openai.String("tell me a story")},
			MaxTokens: openai.Int(9),
		}
		if usage {
			p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
		}
		s := c.Completions.NewStreaming(ctx, p)
		var text strings.Builder
		var cost int64
		ids := map[string]bool{}
		for s.Next() {
			ch := s.Current()
			ids[ch.ID] = true // one stream, one id: the usage chunk's too
			for _, c := range ch.Choices {
				text.WriteString(c.Text)
			}
			if ch.Usage.TotalTokens > 0 {
				if !usage {
					t.Fatalf("usage chunk the client did not ask for: %s", ch.RawJSON())
				}
				if ch.Usage.CompletionTokens != 9 {
					t.Fatalf("usage: %s", ch.Usage.RawJSON())
				}
				cost = costOf(t, ch.Usage.RawJSON())
			}
		}
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		if text.Len() == 0 || usage && cost == 0 || len(ids) != 1 {
			t.Fatalf("streamed completion: text %q cost %d ids %v", text.String(), cost, ids)
		}
		want += cost
	}
	a := waitCalls(t, m.GatewayURL, m.DemoKey, 2)
	if a.Calls != 2 || a.SpentUcr < want {
		t.Fatalf("account after two streamed completions: %+v (the one with usage cost %d)", a, want)
	}

	model, err := c.Models.Get(ctx, "synthetic-1")
	if err != nil || model.ID != "synthetic-1" || model.Object != "model" {
		t.Fatalf("model by id: %+v %v", model, err)
	}
	var apiErr *openai.Error
	if _, err := c.Models.Get(ctx, "no-such-model"); !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != "model_not_found" {
		t.Fatalf("unknown model by id: %v", err)
	}
}

// tools, tool_choice, response_format, n, stop, logprobs and seed reach the
// engine exactly as the client sent them, streamed or not.
func TestParametersPassThroughUntouched(t *testing.T) {
	m := startMesh(t, 1)
	probe := newEngineProbe(t, "recorder-1", 0, 0)
	addNode(t, m, probe.srv.URL, 2)

	var sent []byte
	capture := option.WithMiddleware(func(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
		if req.Body != nil {
			sent, _ = io.ReadAll(req.Body)
			req.Body = io.NopCloser(bytes.NewReader(sent))
		}
		return next(req)
	})
	c := client(t, m, m.DemoKey, capture)
	params := openai.ChatCompletionNewParams{
		Model:    "recorder-1",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("be brief"), openai.UserMessage("what's the weather in Paris?")},
		Tools: []openai.ChatCompletionToolUnionParam{openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
			Name:        "get_weather",
			Description: openai.String("current weather"),
			Parameters:  shared.FunctionParameters{"type": "object", "properties": map[string]any{"city": map[string]any{"type": "string"}}, "required": []string{"city"}},
		})},
		ToolChoice: openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("auto")},
		ResponseFormat: openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONSchema: &shared.ResponseFormatJSONSchemaParam{
			JSONSchema: shared.ResponseFormatJSONSchemaJSONSchemaParam{Name: "answer", Schema: map[string]any{"type": "object"}, Strict: openai.Bool(true)},
		}},
		N:           openai.Int(1),
		Stop:        openai.ChatCompletionNewParamsStopUnion{OfStringArray: []string{"\n\n", "END"}},
		Logprobs:    openai.Bool(true),
		TopLogprobs: openai.Int(3),
		Seed:        openai.Int(42),
		MaxTokens:   openai.Int(5),
	}
	keys := []string{"tools", "tool_choice", "response_format", "n", "stop", "logprobs", "top_logprobs", "seed", "messages", "max_tokens"}
	same := func(what string) {
		t.Helper()
		var a, b map[string]json.RawMessage
		if err := json.Unmarshal(sent, &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(probe.lastBody(), &b); err != nil {
			t.Fatalf("%s: engine got %s: %v", what, probe.lastBody(), err)
		}
		for _, k := range keys {
			if len(a[k]) == 0 || !bytes.Equal(compact(a[k]), compact(b[k])) {
				t.Fatalf("%s: %s changed on the way:\nsent   %s\nengine %s", what, k, a[k], b[k])
			}
		}
	}
	if _, err := c.Chat.Completions.New(context.Background(), params); err != nil {
		t.Fatal(err)
	}
	same("non-streamed")
	s := c.Chat.Completions.NewStreaming(context.Background(), params)
	for s.Next() {
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	same("streamed")
	var b map[string]json.RawMessage
	json.Unmarshal(probe.lastBody(), &b)
	if !bytes.Contains(b["stream_options"], []byte(`"include_usage":true`)) {
		t.Fatalf("the engine was not asked for usage on a stream: %s", b["stream_options"])
	}
}

func compact(raw []byte) []byte {
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil {
		return raw
	}
	return buf.Bytes()
}

// Every error status the gateway gives, as the official client sees it,
// each in OpenAI's shape (the validating middleware checks the schema).
func TestEveryErrorStatus(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	m, err := launch.StartMesh(ctx, launch.MeshOptions{
		Dir: t.TempDir(), Nodes: 3,
		Engine: func(i int, c *engine.SyntheticConfig) {
			switch i {
			case 1:
				c.Models, c.FailRate = []string{"flaky-1"}, 1
			case 2:
				c.Models, c.TTFT = []string{"slow-1"}, 8*time.Second
			}
		},
		Gateway: func(o *launch.GatewayOptions) {
			o.MaxBody = 64 << 10
			o.MaxTokens = 1 << 32          // a worst case no balance covers
			o.RPMLimit = 6                 // a burst of one, then one call every 10 s
			o.HeaderTime = 2 * time.Second // every call must start answering in 2 s: slow-1 takes 8
			o.Tune = func(c *gateway.Config) { c.BodyTimeout = 500 * time.Millisecond }
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop() })

	chat := func(model string) openai.ChatCompletionNewParams {
		return openai.ChatCompletionNewParams{
			Model: model, MaxTokens: openai.Int(4),
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		}
	}
	// expect makes one call with a fresh key (the rate limit is per key)
	// unless key is given, and checks status and code.
	expect := func(name string, status int, code string, key string, call func(c openai.Client) error) *openai.Error {
		t.Helper()
		if key == "" {
			key = newAccount(t, m)
		}
		err := call(client(t, m, key))
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != status || (code != "" && apiErr.Code != code) {
			t.Fatalf("%s: got %v, want %d %s", name, err, status, code)
		}
		if apiErr.Message == "" || apiErr.Type == "" {
			t.Fatalf("%s: error without message or type: %s", name, apiErr.RawJSON())
		}
		return apiErr
	}
	newChat := func(p openai.ChatCompletionNewParams) func(openai.Client) error {
		return func(c openai.Client) error { _, err := c.Chat.Completions.New(ctx, p); return err }
	}

	expect("bad key", 401, "invalid_api_key", "trk_notakey", newChat(chat("synthetic-1")))
	bad := chat("synthetic-1")
	bad.N = openai.Int(0)
	if e := expect("bad field", 400, "invalid_value", "", newChat(bad)); e.Param != "n" {
		t.Fatalf("bad field names param %q", e.Param)
	}
	for _, tc := range []struct {
		name, param, code string
		opt               option.RequestOption
	}{
		{"wrong type", "temperature", "invalid_type", option.WithJSONSet("temperature", "x")},
		{"more than one choice", "n", "invalid_value", option.WithJSONSet("n", 2)},
		{"a limit in another case", "MAX_TOKENS", "unknown_parameter", option.WithJSONSet("MAX_TOKENS", 300)},
	} {
		e := expect(tc.name, 400, tc.code, "", func(c openai.Client) error {
			_, err := c.Chat.Completions.New(ctx, chat("synthetic-1"), tc.opt)
			return err
		})
		if e.Param != tc.param || strings.Contains(e.Message, "Go ") {
			t.Fatalf("%s: param %q, message %q", tc.name, e.Param, e.Message)
		}
	}
	huge := chat("synthetic-1")
	huge.MaxTokens = openai.Int(1 << 40)
	if e := expect("max_tokens over the cap", 400, "invalid_value", "", newChat(huge)); e.Param != "max_tokens" {
		t.Fatalf("max_tokens cap names param %q", e.Param)
	}
	expect("unknown model", 404, "model_not_found", "", newChat(chat("no-such-model")))
	expect("embeddings of an unknown model", 404, "model_not_found", "", func(c openai.Client) error {
		_, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "no-such-model", Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("x")}})
		return err
	})
	rich := chat("synthetic-1")
	rich.MaxTokens = openai.Int(1 << 31)
	expect("more than the balance could pay", 402, "insufficient_credits", "", newChat(rich))
	long := chat("synthetic-1")
	long.Messages = []openai.ChatCompletionMessageParamUnion{openai.UserMessage(strings.Repeat("long prompt ", 8000))}
	expect("body too large", 413, "request_too_large", "", newChat(long))

	limited := newAccount(t, m)
	lc := client(t, m, limited)
	if _, err := lc.Chat.Completions.New(ctx, chat("synthetic-1")); err != nil {
		t.Fatalf("first call under the rate limit: %v", err)
	}
	e := expect("rate limited", 429, "rate_limit_exceeded", limited, newChat(chat("synthetic-1")))
	if e.Response.Header.Get("Retry-After") == "" || e.Response.Header.Get("x-ratelimit-limit-requests") != "6" {
		t.Fatalf("429 headers: %v", e.Response.Header)
	}

	expect("engine failing", 502, "upstream_failed", "", newChat(chat("flaky-1")))
	expect("engine failing again", 502, "upstream_failed", "", newChat(chat("flaky-1")))
	expect("engine failing a third time", 502, "upstream_failed", "", newChat(chat("flaky-1")))
	e = expect("every instance parked", 503, "no_capacity", "", newChat(chat("flaky-1")))
	if e.Response.Header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
	start := time.Now()
	expect("engine too slow to answer", 504, "timeout", "", newChat(chat("slow-1")))
	if took := time.Since(start); took > 6*time.Second {
		t.Fatalf("the timeout took %s; the node had 2s", took)
	}

	// A body that stops arriving: 408 in OpenAI's shape.
	conn, err := net.Dial("tcp", strings.TrimPrefix(m.GatewayURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":", newAccount(t, m))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 408 || !bytes.Contains(raw, []byte(`"code":"request_timeout"`)) {
		t.Fatalf("stalled body: %d %s", resp.StatusCode, raw)
	}
	if err := validate(schemas(t)("ErrorResponse"), raw); err != nil {
		t.Fatal(err)
	}
	// ... and the connection closes: the stalled client holds nothing.
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); n != 0 || err == nil || isTimeout(err) {
		t.Fatalf("after the 408 the connection stayed open: read %d, %v", n, err)
	}

	// Errors net/http writes itself come in OpenAI's shape too.
	for name, req := range map[string]string{
		"bad request line":   "GET /v1/models HTTP/1.1 junk\r\nHost: x\r\n\r\n",
		"no Host header":     "GET /v1/models HTTP/1.1\r\n\r\n",
		"headers over 1 MiB": "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 1<<20+4096) + "\r\n\r\n",
	} {
		status, body := rawHTTP(t, m.GatewayURL, req)
		if status != 400 && status != 431 || validate(schemas(t)("ErrorResponse"), body) != nil {
			t.Fatalf("%s: %d %s", name, status, body)
		}
	}
	// The gateway's view of the network takes a key, as /v1 does.
	if resp, err := http.Get(m.GatewayURL + "/debug/instances"); err != nil || resp.StatusCode != 401 {
		t.Fatalf("/debug/instances without a key: %v %v", resp.Status, err)
	}
}

// rawHTTP writes req as it is to the server at baseURL and reads the answer.
func rawHTTP(t *testing.T, baseURL, req string) (int, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(baseURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	go io.WriteString(conn, req) // the server may answer before reading it all
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%q answered %d with Content-Type %q: %s", req[:min(len(req), 40)], resp.StatusCode, ct, body)
	}
	return resp.StatusCode, body
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// A node whose engine dies after the first byte: the client's stream ends
// with one event holding an error object and finish_reason "error", and
// the client pays for the tokens it got, not the ones it asked for.
func TestMidStreamFailureEndsWithErrorEvent(t *testing.T) {
	m := startMesh(t, 1)
	probe := newEngineProbe(t, "crashy-1", 0, 6)
	addNode(t, m, probe.srv.URL, 2)
	key := newAccount(t, m)

	req, _ := http.NewRequest(http.MethodPost, m.GatewayURL+"/v1/chat/completions", strings.NewReader(
		`{"model":"crashy-1","messages":[{"role":"user","content":"go"}],"max_tokens":500,"stream":true,"stream_options":{"include_usage":true}}`))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var events []string
	for _, line := range strings.Split(string(raw), "\n") {
		if d, ok := strings.CutPrefix(line, "data: "); ok {
			events = append(events, d)
		}
	}
	var errorEvents, content int
	for _, ev := range events {
		if hasKey(ev, "error") {
			errorEvents++
			if !strings.Contains(ev, `"finish_reason":"error"`) {
				t.Fatalf("error event without finish_reason error: %s", ev)
			}
			continue
		}
		if engine.ChunkHasContent([]byte(ev)) {
			content++
		}
	}
	if errorEvents != 1 || content == 0 || events[len(events)-1] != "[DONE]" {
		t.Fatalf("want content, then one error event, then [DONE]; got %d events, %d errors, %d content:\n%s", len(events), errorEvents, content, raw)
	}

	// The official client surfaces it as an error after the content.
	oc := client(t, m, key)
	s := oc.Chat.Completions.NewStreaming(context.Background(), openai.ChatCompletionNewParams{
		Model: "crashy-1", MaxTokens: openai.Int(500),
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("go")},
	})
	got := 0
	for s.Next() {
		got++
	}
	if s.Err() == nil || got == 0 {
		t.Fatalf("openai-go saw %d chunks and err %v", got, s.Err())
	}

	a := waitCalls(t, m.GatewayURL, key, 2)
	price := economy.DefaultPriceTable().For("crashy-1")
	// Each call delivered at most 6 events' worth of tokens; a few bytes of
	// prompt each. The whole 500 tokens would cost far more.
	if a.Calls != 2 || a.SpentUcr <= 0 || a.SpentUcr > 2*economy.Cost(price, 200, 6) {
		t.Fatalf("billed %d µcr for 2 broken calls (%+v); at most %d", a.SpentUcr, a, 2*economy.Cost(price, 200, 6))
	}
}

// A client that leaves stops generation on the node within a second and
// pays only for what was delivered.
func TestClientDisconnectStopsGeneration(t *testing.T) {
	m := startMesh(t, 1)
	probe := newEngineProbe(t, "paced-1", 20, 0)
	addNode(t, m, probe.srv.URL, 2)
	key := newAccount(t, m)
	left := leaveStreamAfter(t, m, probe, key, 5)
	if stopped := probe.lastEnd().Sub(left); stopped > time.Second {
		t.Fatalf("the engine went on for %s after the client left", stopped)
	}
	spent := checkBilledForFew(t, m, key)
	t.Logf("engine stopped %s after the client left; billed %d µcr", probe.lastEnd().Sub(left), spent)
}

// A client that leaves a stream after the node's time to start answering
// (--header-timeout) has passed still stops the node at once and pays for
// what it got: the cancel the gateway sends has a write deadline of its
// own, not the header's long gone one.
func TestClientLeavingLateStopsGeneration(t *testing.T) {
	m := startMeshWith(t, launch.MeshOptions{Nodes: 1,
		Gateway: func(o *launch.GatewayOptions) { o.HeaderTime = 300 * time.Millisecond }})
	probe := newEngineProbe(t, "paced-1", 20, 0)
	addNode(t, m, probe.srv.URL, 2)
	key := newAccount(t, m)
	left := leaveStreamAfter(t, m, probe, key, 12) // 12 tokens at 20 tok/s: 0.6 s, past the 0.3 s
	if stopped := probe.lastEnd().Sub(left); stopped > time.Second {
		t.Fatalf("the engine went on for %s after the client left", stopped)
	}
	checkBilledForFew(t, m, key)
}

// pacedStreamBody asks probe's paced-1 for a long streamed answer.
const pacedStreamBody = `{"model":"paced-1","messages":[{"role":"user","content":"go"}],"max_tokens":2000,"stream":true}`

// leaveStreamAfter starts a long streamed call to paced-1 with key, reads
// events (a handful) while the engine generates, leaves, and waits (up to
// 5 s) for the engine to stop; it returns when the client left.
func leaveStreamAfter(t *testing.T, m *launch.Mesh, probe *engineProbe, key string, events int) time.Time {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, m.GatewayURL+"/v1/chat/completions", strings.NewReader(pacedStreamBody))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s %s", resp.Status, b)
	}
	sc := bufio.NewScanner(resp.Body)
	read := 0
	for read < events && sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			read++
		}
	}
	if read != events || probe.active.Load() != 1 {
		t.Fatalf("read %d events; the engine is generating: %v", read, probe.active.Load() == 1)
	}
	left := time.Now()
	cancel()
	resp.Body.Close()
	for probe.active.Load() != 0 && time.Since(left) < 5*time.Second {
		time.Sleep(5 * time.Millisecond)
	}
	if probe.active.Load() != 0 {
		t.Fatal("the engine still generates 5 s after the client left")
	}
	return left
}

// checkBilledForFew checks key's one call (left after a handful of tokens)
// was billed for a few tokens, not the 2000 asked; it returns what it cost.
func checkBilledForFew(t *testing.T, m *launch.Mesh, key string) int64 {
	t.Helper()
	a := waitCalls(t, m.GatewayURL, key, 1)
	price := economy.DefaultPriceTable().For("paced-1")
	// About 5 tokens reached the client (a few more may have been in flight).
	if limit := economy.Cost(price, int64(len(pacedStreamBody)), 30); a.Calls != 1 || a.SpentUcr <= 0 || a.SpentUcr > limit {
		t.Fatalf("billed %d µcr for a call left after 5 tokens (%+v); at most %d", a.SpentUcr, a, limit)
	}
	return a.SpentUcr
}

// A client that stops reading holds back the engine: what the engine has
// produced stops growing, far short of the answer, instead of piling up in
// gateway or node memory.
func TestSlowClientGetsBackpressure(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	m, err := launch.StartMesh(ctx, launch.MeshOptions{
		Dir: t.TempDir(), Nodes: 1,
		Gateway: func(o *launch.GatewayOptions) {
			o.MaxTokens = 5_000_000
			o.Tune = func(c *gateway.Config) { c.WriteTimeout = time.Minute }
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop() })
	probe := newEngineProbe(t, "firehose-1", 0, 0, func(c *engine.SyntheticConfig) { c.MaxTokens = 2_000_000 })
	addNode(t, m, probe.srv.URL, 2)

	const asked = 2_000_000 // 4 credits at most: the demo account can pay for it
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, m.GatewayURL+"/v1/chat/completions", strings.NewReader(
		fmt.Sprintf(`{"model":"firehose-1","messages":[{"role":"user","content":"go"}],"max_tokens":%d,"stream":true}`, asked)))
	req.Header.Set("Authorization", "Bearer "+m.DemoKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s %s", resp.Status, b)
	}
	// Read nothing. Wait for the engine's output to stop growing.
	var last int64 = -1
	var flatSince time.Time
	deadline := time.Now().Add(40 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
		n := probe.events.Load()
		switch {
		case n != last:
			last, flatSince = n, time.Now()
		case time.Since(flatSince) >= 2*time.Second:
			if n >= asked/2 {
				t.Fatalf("the engine produced %d of %d tokens for a client that read nothing", n, asked)
			}
			t.Logf("engine held at %d tokens (of %d asked) while the client read nothing", n, asked)
			// Reading again lets it go on.
			go io.Copy(io.Discard, resp.Body)
			for wait := time.Now().Add(20 * time.Second); probe.events.Load() <= n; time.Sleep(50 * time.Millisecond) {
				if time.Now().After(wait) {
					t.Fatal("the engine did not go on once the client read again")
				}
			}
			return
		}
	}
	t.Fatalf("the engine's output never stopped growing (%d tokens) while the client read nothing", probe.events.Load())
}
