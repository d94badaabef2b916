package engine

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tokenrouter/tokenrouter/internal/openai"
)

// capBodies are hostile bodies of the kind that once got 300 tokens for the
// price of one (issue 14): a second limit key in another case, twice, or
// escaped, on chat and completions, streamed or not.
var capBodies = []struct {
	body string
	cap  int64 // the gateway's cap; -1: refused with a 400
}{
	{`{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"MAX_TOKENS":300}`, -1},
	{`{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"Max_tokens":300,"stream":true}`, -1},
	{`{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"MAX_COMPLETION_TOKENS":300}`, -1},
	{`{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"max_tokens":300}`, -1},
	{`{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"max\u005ftokens":300}`, -1},
	{`{"model":"synthetic-1","prompt":"hi","max_tokens":2,"MAX_TOKENS":300,"stream":true}`, -1},
	{`{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":1,"max_tokens":300}`, 300},
	{`{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"n_predict":300}`, 300},
	{`{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"stream":true,"stream_options":{"include_usage":false}}`, 3},
	{`{"model":"synthetic-1","prompt":"hi","max_tokens":2}`, 2},
	{`{"model":"synthetic-1","messages":[{"role":"user","content":"hi"}]}`, 0},
}

// lengthKeys are the output limits engines read (see openai.ParseMeta).
var lengthKeys = []string{"max_tokens", "max_completion_tokens", "n_predict", "max_new_tokens", "num_predict"}

// reading is what one engine makes of a body's model, stream and limits.
type reading struct {
	model  string
	stream bool
	limits map[string]int64 // the limit keys it found, with their values
}

// readExact reads the top level by exact key, as Python's json and C++'s
// nlohmann do; last says whether a repeated key's last value counts (the
// usual) or its first. ok is false for a body the reader cannot decode.
func readExact(body []byte, last bool) (r reading, ok bool) {
	var obj []struct {
		k string
		v json.RawMessage
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return r, false
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return r, false
		}
		var v json.RawMessage
		if dec.Decode(&v) != nil {
			return r, false
		}
		obj = append(obj, struct {
			k string
			v json.RawMessage
		}{t.(string), v})
	}
	r.limits = map[string]int64{}
	seen := map[string]bool{}
	for _, f := range obj {
		if seen[f.k] && !last {
			continue
		}
		seen[f.k] = true
		switch f.k {
		case "model":
			json.Unmarshal(f.v, &r.model)
		case "stream":
			json.Unmarshal(f.v, &r.stream)
		}
		for _, lk := range lengthKeys {
			var n float64 // Python reads 1e3 as a number too
			if f.k == lk && string(f.v) != "null" && json.Unmarshal(f.v, &n) == nil {
				r.limits[lk] = int64(n)
			}
		}
	}
	return r, true
}

// readGo reads the body as an engine written in Go does: encoding/json into
// a struct, keys matched case-insensitively, the last of them winning.
func readGo(body []byte) (r reading, ok bool) {
	var v struct {
		Model               string `json:"model"`
		Stream              bool   `json:"stream"`
		MaxTokens           *int64 `json:"max_tokens"`
		MaxCompletionTokens *int64 `json:"max_completion_tokens"`
		NPredict            *int64 `json:"n_predict"`
		MaxNewTokens        *int64 `json:"max_new_tokens"`
		NumPredict          *int64 `json:"num_predict"`
	}
	if json.Unmarshal(body, &v) != nil {
		return r, false
	}
	r = reading{model: v.Model, stream: v.Stream, limits: map[string]int64{}}
	for k, p := range map[string]*int64{"max_tokens": v.MaxTokens, "max_completion_tokens": v.MaxCompletionTokens,
		"n_predict": v.NPredict, "max_new_tokens": v.MaxNewTokens, "num_predict": v.NumPredict} {
		if p != nil {
			r.limits[k] = *p
		}
	}
	return r, true
}

// FuzzOutputWithinCap: for any body the gateway accepts, no engine can
// generate more output than the gateway reserves and bills up to (node
// output <= the gateway's cap), and every engine routes and streams as the
// gateway does. Engines are read three ways (Go's case-folding decoder,
// exact keys last wins, exact keys first wins), and the synthetic engine
// answers the body as the node sends it, its tokens counted.
func FuzzOutputWithinCap(f *testing.F) {
	for _, b := range capBodies {
		f.Add([]byte(b.body), strings.Contains(b.body, `"prompt"`))
	}
	syn, err := NewSynthetic(SyntheticConfig{Rate: 0, Models: []string{"synthetic-1"}})
	if err != nil {
		f.Fatal(err)
	}
	h := syn.Handler()
	f.Fuzz(func(t *testing.T, body []byte, completions bool) {
		meta, err := openai.ParseMeta(body)
		if err != nil {
			return // refused with a 400: nothing reaches a node
		}
		readings := map[string]func() (reading, bool){
			"go":          func() (reading, bool) { return readGo(body) },
			"exact, last": func() (reading, bool) { return readExact(body, true) },
			"exact, first": func() (reading, bool) {
				return readExact(body, false)
			},
		}
		for name, read := range readings {
			r, ok := read()
			if !ok {
				continue // the engine refuses the body
			}
			if r.model != meta.Model || r.stream != meta.Stream {
				t.Fatalf("%s engine reads model %q stream %v, the gateway %q %v: %s", name, r.model, r.stream, meta.Model, meta.Stream, body)
			}
			for k, v := range r.limits {
				if v > meta.MaxTokens {
					t.Fatalf("%s engine reads %s=%d above the gateway's cap %d: %s", name, k, v, meta.MaxTokens, body)
				}
			}
		}
		// The synthetic engine, given the body as a node sends it.
		sent, err := WithUsage(body)
		if err != nil {
			return
		}
		path := "/v1/chat/completions"
		if completions {
			path = "/v1/completions"
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(sent)))
		if rec.Code != http.StatusOK {
			return
		}
		if streamed := strings.HasPrefix(rec.Header().Get("Content-Type"), "text/event-stream"); streamed != meta.Stream {
			t.Fatalf("the engine streamed=%v, the gateway expects %v: %s", streamed, meta.Stream, body)
		}
		out := completionTokens(t, rec.Body.Bytes(), meta.Stream)
		if meta.MaxTokens > 0 && out > meta.MaxTokens {
			t.Fatalf("the engine generated %d tokens, the gateway's cap is %d: %s", out, meta.MaxTokens, body)
		}
	})
}

// completionTokens is the usage's completion_tokens of an answer, streamed
// (the last chunk with usage) or whole.
func completionTokens(t *testing.T, answer []byte, stream bool) int64 {
	var u struct {
		Usage *Usage `json:"usage"`
	}
	if !stream {
		if json.Unmarshal(answer, &u) != nil || u.Usage == nil {
			t.Fatalf("answer without usage: %s", answer)
		}
		return u.Usage.CompletionTokens
	}
	var n int64 = -1
	sc := bufio.NewScanner(bytes.NewReader(answer))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		u.Usage = nil
		if json.Unmarshal([]byte(data), &u) == nil && u.Usage != nil {
			n = u.Usage.CompletionTokens
		}
	}
	if n < 0 {
		t.Fatalf("stream without usage though the node asked for it: %s", answer)
	}
	return n
}

// TestOutputWithinCap: the hostile bodies are refused, and the others
// are capped at the largest limit they set (the fuzz target's seeds run
// them through the engines too).
func TestOutputWithinCap(t *testing.T) {
	for _, b := range capBodies {
		meta, err := openai.ParseMeta([]byte(b.body))
		switch {
		case b.cap < 0 && err == nil:
			t.Errorf("accepted with cap %d: %s", meta.MaxTokens, b.body)
		case b.cap >= 0 && err != nil:
			t.Errorf("refused (%v): %s", err, b.body)
		case b.cap >= 0 && meta.MaxTokens != b.cap:
			t.Errorf("cap %d, want %d: %s", meta.MaxTokens, b.cap, b.body)
		}
	}
}
