package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
)

func TestUpstreamModels(t *testing.T) {
	cfg := fastConfig()
	cfg.Models = []string{"m1", "m2"}
	srv := startEngine(t, cfg)
	for _, base := range []string{srv.URL + "/v1", srv.URL + "/v1/"} {
		up := &Upstream{BaseURL: base}
		models, err := up.Models(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		want := []Model{{ID: "m1", OwnedBy: "synthetic"}, {ID: "m2", OwnedBy: "synthetic"}}
		if !reflect.DeepEqual(models, want) {
			t.Errorf("base %s: models %+v", base, models)
		}
	}
	// A non-2xx answer is a StatusError carrying the engine's message.
	up := &Upstream{BaseURL: srv.URL + "/nope"}
	_, err := up.Models(context.Background())
	var se *StatusError
	if !errors.As(err, &se) || !errors.Is(err, ErrUpstreamStatus) || se.StatusCode != 404 || !strings.Contains(se.Message, "unknown path") {
		t.Errorf("err %v", err)
	}
}

func TestUpstreamDoStreamAddsUsage(t *testing.T) {
	srv := startEngine(t, fastConfig())
	up := &Upstream{BaseURL: srv.URL + "/v1"}
	resp, err := up.Do(context.Background(), "/chat/completions", []byte(
		`{"model":"synthetic-1","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	r := NewSSEReader(resp.Body)
	var usage *Usage
	content, done := 0, false
	for {
		d, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if string(d) == "[DONE]" {
			done = true
			continue
		}
		if u := ChunkUsage(d); u != nil {
			usage = u
		}
		if ChunkHasContent(d) {
			content++
		}
	}
	if !done || content != 5 {
		t.Errorf("done=%v content chunks=%d", done, content)
	}
	if usage == nil || *usage != (Usage{PromptTokens: 2, CompletionTokens: 5, TotalTokens: 7}) {
		t.Errorf("usage %+v", usage)
	}

	// Non-streamed: usage is in the body.
	resp2, err := up.Do(context.Background(), "completions", []byte(`{"model":"synthetic-1","prompt":"a b c","max_tokens":2}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	if u := ChunkUsage(b); u == nil || u.TotalTokens != 5 {
		t.Errorf("non-stream usage %v in %s", u, b)
	}

	// Errors come back as responses, not Go errors.
	resp3, err := up.Do(context.Background(), "/chat/completions", []byte(`{"model":"x","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp3.Body.Close()
	if resp3.StatusCode != 404 {
		t.Errorf("unknown model status %d", resp3.StatusCode)
	}
	if _, err := up.Do(context.Background(), "/chat/completions", []byte(`not json`)); !errors.Is(err, ErrInvalidBody) {
		t.Errorf("bad body err %v", err)
	}
}

func TestUpstreamSendsTokenAndBody(t *testing.T) {
	var gotAuth, gotPath, gotCT string
	var gotBody []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth, gotPath, gotCT = r.Header.Get("Authorization"), r.URL.Path, r.Header.Get("Content-Type")
		gotBody, _ = io.ReadAll(r.Body)
		w.Write([]byte(`{"object":"list","data":[{"id":"llama3","object":"model","owned_by":"library"}]}`))
	}))
	defer srv.Close()

	up := &Upstream{BaseURL: srv.URL + "/v1/", Token: "sekret", Client: srv.Client()}
	models, err := up.Models(context.Background())
	if err != nil || len(models) != 1 || models[0] != (Model{ID: "llama3", OwnedBy: "library"}) {
		t.Fatalf("models %v %v", models, err)
	}
	if gotAuth != "Bearer sekret" || gotPath != "/v1/models" {
		t.Errorf("auth %q path %q", gotAuth, gotPath)
	}

	body := []byte(`{"model":"llama3","messages":[{"role":"user","content":"<b>&</b>"}]}`)
	resp, err := up.Do(context.Background(), "/chat/completions", body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if gotAuth != "Bearer sekret" || gotPath != "/v1/chat/completions" || gotCT != "application/json" {
		t.Errorf("auth %q path %q content type %q", gotAuth, gotPath, gotCT)
	}
	if !bytes.Equal(gotBody, body) {
		t.Errorf("non-stream body changed: %s", gotBody)
	}

	(&Upstream{BaseURL: srv.URL + "/v1"}).Models(context.Background())
	if gotAuth != "" {
		t.Errorf("no token but Authorization %q", gotAuth)
	}
}

func TestWithUsage(t *testing.T) {
	decode := func(b []byte) map[string]any {
		t.Helper()
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("decode %s: %v", b, err)
		}
		return m
	}
	// Non-streamed bodies and stream:false come back byte for byte.
	for _, body := range []string{
		`{"model":"m","messages":[]}`,
		`{"model":"m","stream":false,"stream_options":{"include_usage":false}}`,
		`{ "model" : "m" ,  "stream":null }`,
	} {
		got, err := WithUsage([]byte(body))
		if err != nil || string(got) != body {
			t.Errorf("WithUsage(%s) = %s, %v", body, got, err)
		}
	}

	in := `{"model":"m","stream":true,"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"x":{"type":"string","description":"a <b> & c"}}}}}],` +
		`"tool_choice":"auto","response_format":{"type":"json_schema","json_schema":{"name":"s","schema":{"type":"object"}}},` +
		`"temperature":0.70,"big":12345678901234567890,"stream_options":{"include_obfuscation":false,"include_usage":false}}`
	got, err := WithUsage([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	gm, im := decode(got), decode([]byte(in))
	im["stream_options"].(map[string]any)["include_usage"] = true
	if !reflect.DeepEqual(gm, im) {
		t.Errorf("WithUsage changed more than include_usage:\n in  %s\n got %s", in, got)
	}
	for _, raw := range []string{`"description":"a <b> & c"`, `"temperature":0.70`, `"big":12345678901234567890`, `"include_obfuscation":false`} {
		if !bytes.Contains(got, []byte(raw)) {
			t.Errorf("%s not passed through raw in %s", raw, got)
		}
	}

	got, err = WithUsage([]byte(`{"model":"m","stream":true}`))
	if err != nil || !reflect.DeepEqual(decode(got)["stream_options"], map[string]any{"include_usage": true}) {
		t.Errorf("no stream_options: %s %v", got, err)
	}
	got, err = WithUsage([]byte(`{"model":"m","stream":true,"stream_options":null}`))
	if err != nil || !reflect.DeepEqual(decode(got)["stream_options"], map[string]any{"include_usage": true}) {
		t.Errorf("null stream_options: %s %v", got, err)
	}
	already := `{"stream":true,"stream_options":{"include_usage":true}}`
	if got, err := WithUsage([]byte(already)); err != nil || string(got) != already {
		t.Errorf("already asked: %s %v", got, err)
	}
	for _, bad := range []string{``, `nope`, `[1]`, `null`, `{"stream":true,"stream_options":5}`} {
		if _, err := WithUsage([]byte(bad)); !errors.Is(err, ErrInvalidBody) {
			t.Errorf("WithUsage(%q) err %v", bad, err)
		}
	}
}

// A token is redacted whole, and so is its start when an error text was cut
// in the middle of it.
func TestRedactWholeAndCutTokens(t *testing.T) {
	u := &Upstream{Token: "sk-live-7c1d0e5a9b8f"}
	for in, want := range map[string]string{
		"key sk-live-7c1d0e5a9b8f refused":               "key " + Redacted + " refused",
		"key sk-live-7c1d0e5a9b8f, sk-live-7c1d0e5a9b8f": "key " + Redacted + ", " + Redacted,
		"cut at the key sk-live-7c":                      "cut at the key " + Redacted,
		"ends in sk-":                                    "ends in sk-", // three characters say nothing
		"nothing here":                                   "nothing here",
	} {
		if got := u.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}
