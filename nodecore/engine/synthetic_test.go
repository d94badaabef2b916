package engine

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// startEngine serves a synthetic engine built from cfg on a loopback server.
func startEngine(t *testing.T, cfg SyntheticConfig) *httptest.Server {
	t.Helper()
	s, err := NewSynthetic(cfg)
	if err != nil {
		t.Fatalf("NewSynthetic: %v", err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return srv
}

// fastConfig is the default config without pacing.
func fastConfig() SyntheticConfig {
	c := DefaultSyntheticConfig()
	c.Rate = 0
	return c
}

// call sends method to srv's path with body and returns the status and body.
func call(t *testing.T, srv *httptest.Server, method, path, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer whatever")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// events reads every SSE data payload of a streamed response.
func events(t *testing.T, body []byte) []string {
	t.Helper()
	r := NewSSEReader(strings.NewReader(string(body)))
	var out []string
	for {
		d, err := r.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(d))
	}
}

func mustJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

func TestConfigValidate(t *testing.T) {
	good := DefaultSyntheticConfig()
	if err := good.Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	if err := (SyntheticConfig{}).Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
	for name, mut := range map[string]func(*SyntheticConfig){
		"empty model":     func(c *SyntheticConfig) { c.Models = []string{""} },
		"duplicate model": func(c *SyntheticConfig) { c.Models = []string{"a", "a"} },
		"negative rate":   func(c *SyntheticConfig) { c.Rate = -1 },
		"fail rate > 1":   func(c *SyntheticConfig) { c.FailRate = 1.5 },
		"fail rate < 0":   func(c *SyntheticConfig) { c.FailRate = -0.1 },
		"negative ttft":   func(c *SyntheticConfig) { c.TTFT = -time.Second },
		"max tokens big":  func(c *SyntheticConfig) { c.DefaultMaxTokens = MaxCompletionTokens + 1 },
	} {
		c := DefaultSyntheticConfig()
		mut(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Validate = %v, want ErrInvalidConfig", name, err)
		}
		if _, err := NewSynthetic(c); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: NewSynthetic = %v, want ErrInvalidConfig", name, err)
		}
	}
}

func TestModels(t *testing.T) {
	cfg := fastConfig()
	cfg.Models = []string{"a", "b"}
	srv := startEngine(t, cfg)
	code, body := call(t, srv, "GET", "/v1/models", "")
	if code != 200 {
		t.Fatalf("status %d: %s", code, body)
	}
	var list modelList
	mustJSON(t, body, &list)
	if list.Object != "list" || len(list.Data) != 2 || list.Data[0].ID != "a" || list.Data[1].ID != "b" {
		t.Fatalf("models = %s", body)
	}
	for _, m := range list.Data {
		if m.Object != "model" || m.OwnedBy != "synthetic" || m.Created == 0 {
			t.Errorf("model %+v", m)
		}
	}
}

func TestChatNonStream(t *testing.T) {
	srv := startEngine(t, fastConfig())
	body := `{"model":"synthetic-1","messages":[{"role":"system","content":"be brief"},` +
		`{"role":"user","content":[{"type":"text","text":"hello there world"},{"type":"image_url","image_url":{"url":"x"}}]}],"max_tokens":7}`
	code, b := call(t, srv, "POST", "/v1/chat/completions", body)
	if code != 200 {
		t.Fatalf("status %d: %s", code, b)
	}
	var raw map[string]any
	mustJSON(t, b, &raw)
	if raw["object"] != "chat.completion" || raw["system_fingerprint"] != "synthetic" || raw["model"] != "synthetic-1" {
		t.Fatalf("response %s", b)
	}
	if !strings.HasPrefix(raw["id"].(string), "chatcmpl-") {
		t.Errorf("id %v", raw["id"])
	}
	var resp struct {
		Choices []struct {
			Index   int
			Message struct{ Role, Content string }
			// Logprobs must be present and null.
			Logprobs     json.RawMessage `json:"logprobs"`
			FinishReason string          `json:"finish_reason"`
		}
		Usage Usage
	}
	mustJSON(t, b, &resp)
	c := resp.Choices[0]
	if c.Message.Role != "assistant" || c.FinishReason != "length" || string(c.Logprobs) != "null" {
		t.Errorf("choice %+v", c)
	}
	if n := len(strings.Fields(c.Message.Content)); n != 7 || !strings.HasSuffix(c.Message.Content, " ") {
		t.Errorf("content %q has %d words", c.Message.Content, n)
	}
	// 2 words + 3 words + 1 per message.
	want := Usage{PromptTokens: 7, CompletionTokens: 7, TotalTokens: 14}
	if resp.Usage != want {
		t.Errorf("usage %+v, want %+v", resp.Usage, want)
	}
	if !strings.Contains(string(b), `"logprobs":null`) {
		t.Errorf("logprobs not null in %s", b)
	}
}

func TestChatDefaultLengthStops(t *testing.T) {
	cfg := fastConfig()
	cfg.DefaultMaxTokens = 5
	srv := startEngine(t, cfg)
	code, b := call(t, srv, "POST", "/v1/chat/completions", `{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}]}`)
	if code != 200 {
		t.Fatalf("status %d: %s", code, b)
	}
	var resp chatCompletion
	mustJSON(t, b, &resp)
	if resp.Choices[0].FinishReason != "stop" || resp.Usage.CompletionTokens != 5 {
		t.Errorf("finish %q usage %+v", resp.Choices[0].FinishReason, resp.Usage)
	}
	// max_completion_tokens wins over max_tokens.
	_, b = call(t, srv, "POST", "/v1/chat/completions",
		`{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":9,"max_completion_tokens":3}`)
	mustJSON(t, b, &resp)
	if resp.Usage.CompletionTokens != 3 || resp.Choices[0].FinishReason != "length" {
		t.Errorf("max_completion_tokens: %s", b)
	}
}

// chunkOf decodes a chat chunk.
type testChunk struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Model   string `json:"model"`
	Choices []struct {
		Delta struct {
			Role    *string `json:"role"`
			Content *string `json:"content"`
		} `json:"delta"`
		Text         *string `json:"text"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *Usage `json:"usage"`
}

func TestChatStream(t *testing.T) {
	srv := startEngine(t, fastConfig())
	for _, includeUsage := range []bool{false, true} {
		body := `{"model":"synthetic-1","stream":true,"max_tokens":12,"messages":[{"role":"user","content":"tell me"}]}`
		if includeUsage {
			body = `{"model":"synthetic-1","stream":true,"stream_options":{"include_usage":true},"max_tokens":12,"messages":[{"role":"user","content":"tell me"}]}`
		}
		code, b := call(t, srv, "POST", "/v1/chat/completions", body)
		if code != 200 {
			t.Fatalf("status %d: %s", code, b)
		}
		evs := events(t, b)
		if evs[len(evs)-1] != "[DONE]" {
			t.Fatalf("last event %q", evs[len(evs)-1])
		}
		evs = evs[:len(evs)-1]
		var chunks []testChunk
		for _, e := range evs {
			var c testChunk
			mustJSON(t, []byte(e), &c)
			if c.Object != "chat.completion.chunk" || c.Model != "synthetic-1" || c.ID != chunks0ID(chunks, c.ID) {
				t.Fatalf("chunk %s", e)
			}
			chunks = append(chunks, c)
			hasUsageKey := strings.Contains(e, `"usage":`)
			if hasUsageKey != includeUsage {
				t.Errorf("include_usage=%v but chunk %s", includeUsage, e)
			}
		}
		first := chunks[0].Choices[0].Delta
		if first.Role == nil || *first.Role != "assistant" || first.Content == nil || *first.Content != "" {
			t.Errorf("first chunk %s", evs[0])
		}
		var text strings.Builder
		content := 0
		for _, c := range chunks[1:] {
			if len(c.Choices) == 1 && c.Choices[0].Delta.Content != nil && *c.Choices[0].Delta.Content != "" {
				content++
				tok := *c.Choices[0].Delta.Content
				if len(strings.Fields(tok)) != 1 || !strings.HasSuffix(tok, " ") {
					t.Errorf("token %q", tok)
				}
				text.WriteString(tok)
			}
		}
		if content != 12 {
			t.Errorf("include_usage=%v: %d content chunks, want 12", includeUsage, content)
		}
		wantChunks := 1 + 12 + 1
		if includeUsage {
			wantChunks++
		}
		if len(chunks) != wantChunks {
			t.Fatalf("%d chunks, want %d", len(chunks), wantChunks)
		}
		fin := chunks[13]
		if fin.Choices[0].FinishReason == nil || *fin.Choices[0].FinishReason != "length" || fin.Choices[0].Delta.Content != nil {
			t.Errorf("finish chunk %s", evs[13])
		}
		if includeUsage {
			last := chunks[14]
			if len(last.Choices) != 0 || !strings.Contains(evs[14], `"choices":[]`) || last.Usage == nil {
				t.Fatalf("usage chunk %s", evs[14])
			}
			if *last.Usage != (Usage{PromptTokens: 3, CompletionTokens: 12, TotalTokens: 15}) {
				t.Errorf("usage %+v", *last.Usage)
			}
			for _, e := range evs[:14] {
				if !strings.Contains(e, `"usage":null`) {
					t.Errorf("chunk without usage:null: %s", e)
				}
			}
		}
		// The streamed text equals the non-streamed text for the same prompt.
		_, nb := call(t, srv, "POST", "/v1/chat/completions", strings.Replace(body, `"stream":true`, `"stream":false`, 1))
		var resp chatCompletion
		mustJSON(t, nb, &resp)
		if resp.Choices[0].Message.Content != text.String() {
			t.Errorf("stream text %q != non-stream %q", text.String(), resp.Choices[0].Message.Content)
		}
	}
}

// chunks0ID returns the id of the first chunk, or id when there is none.
func chunks0ID(chunks []testChunk, id string) string {
	if len(chunks) == 0 {
		return id
	}
	return chunks[0].ID
}

func TestCompletions(t *testing.T) {
	srv := startEngine(t, fastConfig())
	code, b := call(t, srv, "POST", "/v1/completions", `{"model":"synthetic-1","prompt":"once upon a time","max_tokens":4}`)
	if code != 200 {
		t.Fatalf("status %d: %s", code, b)
	}
	var resp struct {
		ID, Object, Model string
		SystemFingerprint string `json:"system_fingerprint"`
		Choices           []struct {
			Text         string
			Index        int
			Logprobs     json.RawMessage
			FinishReason string `json:"finish_reason"`
		}
		Usage Usage
	}
	mustJSON(t, b, &resp)
	if resp.Object != "text_completion" || !strings.HasPrefix(resp.ID, "cmpl-") || resp.SystemFingerprint != "synthetic" {
		t.Fatalf("response %s", b)
	}
	if len(strings.Fields(resp.Choices[0].Text)) != 4 || resp.Choices[0].FinishReason != "length" || string(resp.Choices[0].Logprobs) != "null" {
		t.Errorf("choice %+v", resp.Choices[0])
	}
	if resp.Usage != (Usage{PromptTokens: 4, CompletionTokens: 4, TotalTokens: 8}) {
		t.Errorf("usage %+v", resp.Usage)
	}

	for _, includeUsage := range []bool{false, true} {
		body := `{"model":"synthetic-1","prompt":["once upon","a time"],"max_tokens":6,"stream":true}`
		if includeUsage {
			body = `{"model":"synthetic-1","prompt":["once upon","a time"],"max_tokens":6,"stream":true,"stream_options":{"include_usage":true}}`
		}
		code, b := call(t, srv, "POST", "/v1/completions", body)
		if code != 200 {
			t.Fatalf("status %d: %s", code, b)
		}
		evs := events(t, b)
		if evs[len(evs)-1] != "[DONE]" {
			t.Fatalf("last event %q", evs[len(evs)-1])
		}
		evs = evs[:len(evs)-1]
		content, usageChunks := 0, 0
		for _, e := range evs {
			var c testChunk
			mustJSON(t, []byte(e), &c)
			if c.Object != "text_completion" {
				t.Fatalf("chunk %s", e)
			}
			if len(c.Choices) == 1 && c.Choices[0].Text != nil && *c.Choices[0].Text != "" {
				content++
			}
			if c.Usage != nil {
				usageChunks++
				if *c.Usage != (Usage{PromptTokens: 4, CompletionTokens: 6, TotalTokens: 10}) || len(c.Choices) != 0 {
					t.Errorf("usage chunk %s", e)
				}
			}
		}
		if content != 6 || len(evs) != 6+1+usageChunks {
			t.Errorf("%d content chunks of %d", content, len(evs))
		}
		if (usageChunks == 1) != includeUsage || usageChunks > 1 {
			t.Errorf("include_usage=%v: %d usage chunks", includeUsage, usageChunks)
		}
	}
}

func TestEmbeddings(t *testing.T) {
	srv := startEngine(t, fastConfig())
	code, b := call(t, srv, "POST", "/v1/embeddings", `{"model":"synthetic-1","input":"hello embedding world"}`)
	if code != 200 {
		t.Fatalf("status %d: %s", code, b)
	}
	var one struct {
		Object string
		Data   []struct {
			Object    string
			Index     int
			Embedding []float32
		}
		Model string
		Usage embeddingUsage
	}
	mustJSON(t, b, &one)
	if one.Object != "list" || one.Model != "synthetic-1" || len(one.Data) != 1 || one.Data[0].Object != "embedding" ||
		len(one.Data[0].Embedding) != EmbeddingDims || one.Usage != (embeddingUsage{3, 3}) {
		t.Fatalf("response %s", b)
	}

	code, b = call(t, srv, "POST", "/v1/embeddings", `{"model":"synthetic-1","input":["a b","hello embedding world"]}`)
	if code != 200 {
		t.Fatalf("status %d: %s", code, b)
	}
	var two = one
	two.Data = nil
	mustJSON(t, b, &two)
	if len(two.Data) != 2 || two.Data[1].Index != 1 || two.Usage != (embeddingUsage{5, 5}) {
		t.Fatalf("response %s", b)
	}
	// Deterministic from the input text: the same text gives the same vector.
	for i, x := range two.Data[1].Embedding {
		if x != one.Data[0].Embedding[i] {
			t.Fatalf("embedding of the same text differs at %d", i)
		}
	}
	if two.Data[0].Embedding[0] == two.Data[1].Embedding[0] {
		t.Errorf("different texts gave the same first component")
	}

	code, b = call(t, srv, "POST", "/v1/embeddings", `{"model":"synthetic-1","input":"hello embedding world","encoding_format":"base64"}`)
	if code != 200 {
		t.Fatalf("status %d: %s", code, b)
	}
	var enc struct{ Data []struct{ Embedding string } }
	mustJSON(t, b, &enc)
	raw, err := base64.StdEncoding.DecodeString(enc.Data[0].Embedding)
	if err != nil || len(raw) != 4*EmbeddingDims {
		t.Errorf("base64 embedding: %v, %d bytes", err, len(raw))
	}
}

func TestBadRequests(t *testing.T) {
	srv := startEngine(t, fastConfig())
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		param, code              string
	}{
		{"bad json", "POST", "/v1/chat/completions", `{"model":`, 400, "", ""},
		{"not an object", "POST", "/v1/chat/completions", `[1,2]`, 400, "", ""},
		{"missing model", "POST", "/v1/chat/completions", `{` + msgs + `}`, 400, "model", ""},
		{"missing messages", "POST", "/v1/chat/completions", `{"model":"synthetic-1"}`, 400, "messages", ""},
		{"empty messages", "POST", "/v1/chat/completions", `{"model":"synthetic-1","messages":[]}`, 400, "messages", ""},
		{"bad content", "POST", "/v1/chat/completions", `{"model":"synthetic-1","messages":[{"role":"user","content":5}]}`, 400, "messages[0].content", ""},
		{"max_tokens 0", "POST", "/v1/chat/completions", `{"model":"synthetic-1",` + msgs + `,"max_tokens":0}`, 400, "max_tokens", ""},
		{"max_tokens big", "POST", "/v1/chat/completions", `{"model":"synthetic-1",` + msgs + `,"max_tokens":4097}`, 400, "max_tokens", ""},
		{"max_completion_tokens neg", "POST", "/v1/chat/completions", `{"model":"synthetic-1",` + msgs + `,"max_completion_tokens":-1}`, 400, "max_completion_tokens", ""},
		{"unknown model", "POST", "/v1/chat/completions", `{"model":"gpt-9",` + msgs + `}`, 404, "model", "model_not_found"},
		{"completions missing model", "POST", "/v1/completions", `{"prompt":"x"}`, 400, "model", ""},
		{"completions missing prompt", "POST", "/v1/completions", `{"model":"synthetic-1"}`, 400, "prompt", ""},
		{"completions empty prompt", "POST", "/v1/completions", `{"model":"synthetic-1","prompt":""}`, 400, "prompt", ""},
		{"completions empty array", "POST", "/v1/completions", `{"model":"synthetic-1","prompt":[]}`, 400, "prompt", ""},
		{"completions max_tokens big", "POST", "/v1/completions", `{"model":"synthetic-1","prompt":"x","max_tokens":5000}`, 400, "max_tokens", ""},
		{"completions unknown model", "POST", "/v1/completions", `{"model":"nope","prompt":"x"}`, 404, "model", "model_not_found"},
		{"completions bad json", "POST", "/v1/completions", `nope`, 400, "", ""},
		{"embeddings missing model", "POST", "/v1/embeddings", `{"input":"x"}`, 400, "model", ""},
		{"embeddings missing input", "POST", "/v1/embeddings", `{"model":"synthetic-1"}`, 400, "input", ""},
		{"embeddings empty input", "POST", "/v1/embeddings", `{"model":"synthetic-1","input":""}`, 400, "input", ""},
		{"embeddings empty array", "POST", "/v1/embeddings", `{"model":"synthetic-1","input":[]}`, 400, "input", ""},
		{"embeddings unknown model", "POST", "/v1/embeddings", `{"model":"nope","input":"x"}`, 404, "model", "model_not_found"},
		{"embeddings bad json", "POST", "/v1/embeddings", `{`, 400, "", ""},
		{"GET chat", "GET", "/v1/chat/completions", ``, 405, "", "method_not_allowed"},
		{"POST models", "POST", "/v1/models", `{}`, 405, "", "method_not_allowed"},
		{"GET embeddings", "GET", "/v1/embeddings", ``, 405, "", "method_not_allowed"},
		{"unknown path", "GET", "/v1/nope", ``, 404, "", "unknown_url"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, b := call(t, srv, tc.method, tc.path, tc.body)
			if code != tc.status {
				t.Fatalf("status %d, want %d: %s", code, tc.status, b)
			}
			var e struct {
				Error struct {
					Message string
					Type    string
					Param   *string
					Code    *string
				}
			}
			mustJSON(t, b, &e)
			if e.Error.Message == "" || e.Error.Type != errTypeInvalidRequest {
				t.Errorf("error %s", b)
			}
			if deref(e.Error.Param) != tc.param || deref(e.Error.Code) != tc.code {
				t.Errorf("param %q code %q, want %q %q", deref(e.Error.Param), deref(e.Error.Code), tc.param, tc.code)
			}
			if !strings.Contains(string(b), `"param":`) || !strings.Contains(string(b), `"code":`) {
				t.Errorf("param/code keys missing: %s", b)
			}
		})
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func TestDeterminism(t *testing.T) {
	srv := startEngine(t, fastConfig())
	body := `{"model":"synthetic-1","messages":[{"role":"user","content":"same prompt"}],"max_tokens":20}`
	text := func(body string) string {
		code, b := call(t, srv, "POST", "/v1/chat/completions", body)
		if code != 200 {
			t.Fatalf("status %d: %s", code, b)
		}
		var r chatCompletion
		mustJSON(t, b, &r)
		return r.Choices[0].Message.Content
	}
	a, b := text(body), text(body)
	if a != b {
		t.Fatalf("same request gave %q and %q", a, b)
	}
	// Another engine with another Seed still gives the same text.
	cfg := fastConfig()
	cfg.Seed = 99
	srv2 := startEngine(t, cfg)
	_, b2 := call(t, srv2, "POST", "/v1/chat/completions", body)
	var r chatCompletion
	mustJSON(t, b2, &r)
	if r.Choices[0].Message.Content != a {
		t.Errorf("text depends on Seed")
	}
	if c := text(strings.Replace(body, "same prompt", "other prompt", 1)); c == a {
		t.Errorf("different prompts gave the same text %q", c)
	}
}

func TestFailRate(t *testing.T) {
	cfg := fastConfig()
	cfg.FailRate = 1
	srv := startEngine(t, cfg)
	for _, tc := range []struct{ path, body string }{
		{"/v1/chat/completions", `{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"stream":true}`},
		{"/v1/completions", `{"model":"synthetic-1","prompt":"hi"}`},
		{"/v1/embeddings", `{"model":"synthetic-1","input":"hi"}`},
	} {
		for range 5 {
			code, b := call(t, srv, "POST", tc.path, tc.body)
			want := `{"error":{"message":"synthetic engine failure (--fail-rate)","type":"server_error","param":null,"code":"synthetic_failure"}}`
			if code != 500 || string(b) != want {
				t.Fatalf("%s: %d %s", tc.path, code, b)
			}
		}
	}
	cfg.FailRate = 0
	srv = startEngine(t, cfg)
	for range 50 {
		if code, b := call(t, srv, "POST", "/v1/completions", `{"model":"synthetic-1","prompt":"hi","max_tokens":1}`); code != 200 {
			t.Fatalf("fail rate 0: %d %s", code, b)
		}
	}
	// A fractional rate fails some and not all, reproducibly for a Seed.
	cfg.FailRate = 0.5
	pattern := func() string {
		srv := startEngine(t, cfg)
		var p strings.Builder
		for range 40 {
			code, _ := call(t, srv, "POST", "/v1/completions", `{"model":"synthetic-1","prompt":"hi","max_tokens":1}`)
			if code == http.StatusInternalServerError {
				p.WriteByte('x')
			} else {
				p.WriteByte('o')
			}
		}
		return p.String()
	}
	p1, p2 := pattern(), pattern()
	if p1 != p2 || !strings.Contains(p1, "x") || !strings.Contains(p1, "o") {
		t.Errorf("fail patterns %q %q", p1, p2)
	}
}

func TestRatePacing(t *testing.T) {
	cfg := fastConfig()
	cfg.Rate = 100
	srv := startEngine(t, cfg)
	start := time.Now()
	code, b := call(t, srv, "POST", "/v1/chat/completions",
		`{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":10,"stream":true}`)
	if code != 200 {
		t.Fatalf("status %d: %s", code, b)
	}
	if d := time.Since(start); d < 85*time.Millisecond {
		t.Errorf("10 tokens at 100 tok/s took %v, want >= ~90ms", d)
	}
	// Non-streamed answers take the same time.
	start = time.Now()
	call(t, srv, "POST", "/v1/chat/completions", `{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":10}`)
	if d := time.Since(start); d < 85*time.Millisecond {
		t.Errorf("non-stream 10 tokens at 100 tok/s took %v", d)
	}
}

func TestTTFT(t *testing.T) {
	cfg := fastConfig()
	cfg.TTFT = 50 * time.Millisecond
	srv := startEngine(t, cfg)
	start := time.Now()
	call(t, srv, "POST", "/v1/completions", `{"model":"synthetic-1","prompt":"hi","max_tokens":3,"stream":true}`)
	if d := time.Since(start); d < 45*time.Millisecond {
		t.Errorf("ttft 50ms but took %v", d)
	}
}

func TestClientCancelStopsGeneration(t *testing.T) {
	cfg := fastConfig()
	cfg.Rate = 20
	s, err := NewSynthetic(cfg)
	if err != nil {
		t.Fatal(err)
	}
	returned := make(chan struct{}, 1)
	h := s.Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { returned <- struct{}{} }()
		h.ServeHTTP(w, r)
	}))
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/v1/chat/completions", strings.NewReader(
		`{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":1000,"stream":true}`))
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := NewSSEReader(resp.Body)
	for range 2 {
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	select {
	case <-returned:
	case <-time.After(time.Second):
		t.Fatal("handler still running 1s after the client went away")
	}
}
