package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/tokenrouter/tokenrouter/nodecore/engine/enginetest"
)

// allFlavors are the test engines' flavors.
var allFlavors = []enginetest.Flavor{
	enginetest.Ollama, enginetest.NoUsage, enginetest.LlamaCpp, enginetest.VLLM,
	enginetest.Cloud, enginetest.MLX, enginetest.Bare,
}

// strictChunk is what OpenAI's SDKs require of a chunk or an answer.
type strictChunk struct {
	ID      *string           `json:"id"`
	Object  *string           `json:"object"`
	Created *int64            `json:"created"`
	Model   *string           `json:"model"`
	Choices []json.RawMessage `json:"choices"`
}

// checkConforms fails unless b has a non-empty id, the wanted object, a
// positive created and a model, all at the top level.
func checkConforms(t *testing.T, what string, b []byte, object string) {
	t.Helper()
	var c strictChunk
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("%s: %v: %s", what, err, b)
	}
	if c.ID == nil || *c.ID == "" || c.Object == nil || *c.Object != object || c.Created == nil || *c.Created <= 0 || c.Model == nil || c.Choices == nil {
		t.Errorf("%s does not conform: %s", what, b)
	}
}

// contentOf returns the generated text of a chunk or answer.
func contentOf(t *testing.T, b []byte) string {
	t.Helper()
	var v struct {
		Choices []struct {
			Text    string                    `json:"text"`
			Delta   struct{ Content *string } `json:"delta"`
			Message struct{ Content *string } `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	var s strings.Builder
	for _, c := range v.Choices {
		s.WriteString(c.Text)
		if c.Delta.Content != nil {
			s.WriteString(*c.Delta.Content)
		}
		if c.Message.Content != nil {
			s.WriteString(*c.Message.Content)
		}
	}
	return s.String()
}

// reportsUsage says whether a flavor reports usage when the node asks.
func reportsUsage(f enginetest.Flavor) bool {
	return f != enginetest.NoUsage && f != enginetest.MLX
}

func requestBody(path, model string, stream bool, extra string) []byte {
	if path == "/completions" {
		return fmt.Appendf(nil, `{"model":%q,"stream":%v,"prompt":"Say hello"%s}`, model, stream, extra)
	}
	return fmt.Appendf(nil, `{"model":%q,"stream":%v,"messages":[{"role":"user","content":"Say hello"}]%s}`, model, stream, extra)
}

// streamAll calls a test engine through the adapter and reads the whole stream.
func streamAll(t *testing.T, e *enginetest.Engine, path string, body []byte) (chunks [][]byte, usage []bool, s *Stream, end error) {
	t.Helper()
	up := &Upstream{BaseURL: e.BaseURL()}
	resp, err := up.Do(context.Background(), path, body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	s = NewStream(resp.Body, FillerFor(path, true, "req_1", "asked-model", 1_700_000_123))
	for {
		c, u, err := s.Next()
		if err != nil {
			return chunks, usage, s, err
		}
		chunks = append(chunks, bytes.Clone(c))
		usage = append(usage, u)
	}
}

func TestQuirkyEnginesStream(t *testing.T) {
	want := strings.Join(enginetest.DefaultReply, "")
	for _, f := range allFlavors {
		for _, path := range []string{"/chat/completions", "/completions"} {
			t.Run(string(f)+path, func(t *testing.T) {
				e := enginetest.Start(enginetest.Config{Flavor: f})
				defer e.Close()
				model := enginetest.DefaultModels(f)[0]
				chunks, usage, s, end := streamAll(t, e, path, requestBody(path, model, true, ""))
				if end != io.EOF {
					t.Fatalf("stream ended with %v", end)
				}
				object := ObjectChatChunk
				if path == "/completions" {
					object = ObjectTextCompletion
				}
				var got strings.Builder
				usageAt := -1
				for i, c := range chunks {
					checkConforms(t, fmt.Sprintf("chunk %d", i), c, object)
					got.WriteString(contentOf(t, c))
					if usage[i] {
						usageAt = i
					}
				}
				if got.String() != want {
					t.Errorf("content %q, want %q", got.String(), want)
				}
				if !s.Complete() || s.Done == (f == enginetest.MLX) {
					t.Errorf("complete=%v done=%v", s.Complete(), s.Done)
				}
				if reportsUsage(f) != (s.Usage != nil) || reportsUsage(f) != (usageAt >= 0) {
					t.Fatalf("usage %+v at chunk %d", s.Usage, usageAt)
				}
				if s.Chunks != int64(len(enginetest.DefaultReply)) || s.Chars != int64(len([]rune(want))) {
					t.Errorf("tally: %d chunks, %d chars", s.Chunks, s.Chars)
				}
				if f == enginetest.LlamaCpp {
					// The last words, the finish_reason and usage share a chunk;
					// llama.cpp's "timings" passes through.
					last := chunks[usageAt]
					if contentOf(t, last) != "!" || !bytes.Contains(last, []byte(`"timings"`)) {
						t.Errorf("llama.cpp last chunk: %s", last)
					}
				}
				if f == enginetest.Ollama {
					// The adapter asked for usage, so recent Ollama sent it.
					if r := e.Requests(); len(r) != 1 || !bytes.Contains(r[0].Body, []byte(`"include_usage":true`)) {
						t.Errorf("engine saw %s", r[0].Body)
					}
				}
			})
		}
	}
}

func TestQuirkyEnginesWhole(t *testing.T) {
	want := strings.Join(enginetest.DefaultReply, "")
	for _, f := range allFlavors {
		for _, path := range []string{"/chat/completions", "/completions", "/embeddings"} {
			t.Run(string(f)+path, func(t *testing.T) {
				e := enginetest.Start(enginetest.Config{Flavor: f})
				defer e.Close()
				model := enginetest.DefaultModels(f)[0]
				body := requestBody(path, model, false, "")
				if path == "/embeddings" {
					body = fmt.Appendf(nil, `{"model":%q,"input":"Say hello"}`, model)
				}
				up := &Upstream{BaseURL: e.BaseURL()}
				resp, err := up.Do(context.Background(), path, body)
				if err != nil {
					t.Fatal(err)
				}
				data, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				c, err := ParseChunk(data)
				if err != nil || c.Err != nil {
					t.Fatalf("parse: %v %v", err, c.Err)
				}
				fill := FillerFor(path, false, "req_1", model, 1_700_000_123)
				out := fill.Fill(data, &c)
				switch path {
				case "/embeddings":
					var v struct{ Object, Model string }
					if json.Unmarshal(out, &v) != nil || v.Object != ObjectList || v.Model != model {
						t.Errorf("embeddings: %s", out)
					}
					if want := f != enginetest.NoUsage && f != enginetest.MLX; (c.Usage != nil) != want {
						t.Errorf("embeddings usage %+v", c.Usage)
					}
					return
				case "/chat/completions":
					checkConforms(t, "answer", out, ObjectChatCompletion)
				default:
					checkConforms(t, "answer", out, ObjectTextCompletion)
				}
				if contentOf(t, out) != want || c.Chars != int64(len([]rune(want))) || !c.Content {
					t.Errorf("content %q, %d chars", contentOf(t, out), c.Chars)
				}
				if (c.Usage != nil) != reportsUsage(f) {
					t.Errorf("usage %+v", c.Usage)
				}
				if f == enginetest.LlamaCpp && !bytes.Contains(out, []byte(`"timings":{`)) {
					t.Errorf("timings dropped: %s", out)
				}
				if f != enginetest.Bare && !bytes.Equal(out, data) {
					t.Errorf("a conforming answer was rewritten:\n%s\n%s", data, out)
				}
			})
		}
	}
}

func TestQuirkyEnginesFailMidStream(t *testing.T) {
	for _, tc := range []struct {
		name       string
		cfg        enginetest.Config
		wantStatus int
		wantType   string
	}{
		{"vllm bad request", enginetest.Config{Flavor: enginetest.VLLM, FailAfter: 2, FailCode: 400}, 400, "invalid_request_error"},
		{"vllm server error, no [DONE]", enginetest.Config{Flavor: enginetest.VLLM, FailAfter: 2, NoDoneAfterError: true}, 500, "server_error"},
		{"llama.cpp", enginetest.Config{Flavor: enginetest.LlamaCpp, FailAfter: 2}, 500, "server_error"},
		{"llama.cpp error line", enginetest.Config{Flavor: enginetest.LlamaCpp, FailAfter: 2, OldErrors: true}, 500, "server_error"},
		{"openrouter", enginetest.Config{Flavor: enginetest.Cloud, FailAfter: 2, FailCode: 502}, 502, "server_error"},
		{"openai shape", enginetest.Config{Flavor: enginetest.Bare, FailAfter: 2}, 0, "server_error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := enginetest.Start(tc.cfg)
			defer e.Close()
			chunks, _, s, end := streamAll(t, e, "/chat/completions", requestBody("/chat/completions", enginetest.DefaultModels(tc.cfg.Flavor)[0], true, ""))
			apiErr, ok := IsEngineError(end)
			if !ok {
				t.Fatalf("stream ended with %v, want an engine error", end)
			}
			if apiErr.Status != tc.wantStatus || apiErr.Type != tc.wantType || apiErr.Message != "the engine failed while generating" {
				t.Errorf("error %+v", apiErr)
			}
			if apiErr.ConsumerFault() != (tc.wantStatus == 400) {
				t.Errorf("consumer fault %v", apiErr.ConsumerFault())
			}
			for _, c := range chunks {
				if bytes.Contains(c, []byte(`"error"`)) {
					t.Errorf("an error chunk was relayed: %s", c)
				}
			}
			if s.Chunks != 2 || s.Complete() {
				t.Errorf("content chunks %d, complete %v", s.Chunks, s.Complete())
			}
		})
	}
	// A failure before the first chunk ends the stream before anything is relayed.
	e := enginetest.Start(enginetest.Config{Flavor: enginetest.VLLM, FailAtStart: true, FailCode: 400})
	defer e.Close()
	chunks, _, _, end := streamAll(t, e, "/chat/completions", requestBody("/chat/completions", "Qwen/Qwen2.5-7B-Instruct", true, ""))
	if apiErr, ok := IsEngineError(end); !ok || len(chunks) != 0 || !apiErr.ConsumerFault() {
		t.Errorf("chunks %d, end %v", len(chunks), end)
	}
}

func TestQuirkyEnginesRefuse(t *testing.T) {
	for _, tc := range []struct {
		flavor     enginetest.Flavor
		model      string
		maxTokens  int
		wantStatus int
		wantType   string
		wantMsg    string
	}{
		{enginetest.Ollama, "nope", 0, 404, "invalid_request_error", `model "nope" not found, try pulling it first`},
		{enginetest.VLLM, "nope", 0, 404, "invalid_request_error", "The model `nope` does not exist."},
		{enginetest.VLLM, "Qwen/Qwen2.5-7B-Instruct", enginetest.RejectMaxTokens + 1, 400, "invalid_request_error", "exceeds the model's context length"},
		{enginetest.LlamaCpp, "anything", enginetest.RejectMaxTokens + 1, 400, "invalid_request_error", "exceeds the model's context length"},
		{enginetest.Cloud, "nope", 0, 404, "invalid_request_error", "model not found: nope"},
	} {
		t.Run(string(tc.flavor), func(t *testing.T) {
			e := enginetest.Start(enginetest.Config{Flavor: tc.flavor})
			defer e.Close()
			up := &Upstream{BaseURL: e.BaseURL()}
			body := requestBody("/chat/completions", tc.model, true, fmt.Sprintf(`,"max_tokens":%d`, tc.maxTokens))
			resp, err := up.Do(context.Background(), "/chat/completions", body)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			apiErr := ParseError(resp.StatusCode, b)
			if apiErr.Status != tc.wantStatus || apiErr.Type != tc.wantType || !strings.Contains(apiErr.Message, tc.wantMsg) {
				t.Errorf("%+v from %s", apiErr, b)
			}
			// Its OpenAI shape is what a client reads.
			var shaped struct {
				Error struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Code    *string `json:"code"`
				} `json:"error"`
			}
			if err := json.Unmarshal(apiErr.JSON(), &shaped); err != nil || shaped.Error.Message != apiErr.Message || shaped.Error.Type != tc.wantType {
				t.Errorf("JSON %s", apiErr.JSON())
			}
		})
	}
}

func TestParseError(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   APIError
	}{
		{"openai", 400, `{"error":{"message":"bad","type":"invalid_request_error","param":"messages","code":"invalid_value"}}`,
			APIError{Status: 400, Message: "bad", Type: "invalid_request_error", Param: "messages", Code: "invalid_value"}},
		{"llama.cpp numeric code", 400, `{"error":{"code":400,"message":"too long","type":"invalid_request_error"}}`,
			APIError{Status: 400, Message: "too long", Type: "invalid_request_error"}},
		{"in-stream numeric code", 0, `{"error":{"code":503,"message":"busy","type":"unavailable_error"}}`,
			APIError{Status: 503, Message: "busy", Type: "unavailable_error"}},
		{"vllm", 400, `{"object":"error","message":"ctx","type":"BadRequestError","param":null,"code":400}`,
			APIError{Status: 400, Message: "ctx", Type: "invalid_request_error"}},
		{"ollama native", 500, `{"error":"llama runner process has terminated"}`,
			APIError{Status: 500, Message: "llama runner process has terminated", Type: "server_error"}},
		{"ollama /v1", 404, `{"error":{"message":"model \"x\" not found","type":"not_found_error","param":null,"code":null}}`,
			APIError{Status: 404, Message: `model "x" not found`, Type: "invalid_request_error"}},
		{"fastapi detail", 422, `{"detail":"Model not loaded"}`, APIError{Status: 422, Message: "Model not loaded", Type: "invalid_request_error"}},
		{"fastapi validation", 422, `{"detail":[{"loc":["body","messages"],"msg":"field required"}]}`,
			APIError{Status: 422, Message: `[{"loc":["body","messages"],"msg":"field required"}]`, Type: "invalid_request_error"}},
		{"plain text", 502, "Bad Gateway\n", APIError{Status: 502, Message: "Bad Gateway", Type: "server_error"}},
		{"empty", 503, "", APIError{Status: 503, Message: "Service Unavailable", Type: "server_error"}},
		{"empty in-stream", 0, "", APIError{Message: "the engine reported an error", Type: "server_error"}},
		{"flat message", 500, `{"message":"boom"}`, APIError{Status: 500, Message: "boom", Type: "server_error"}},
	} {
		got := ParseError(tc.status, []byte(tc.body))
		if *got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, *got, tc.want)
		}
	}
	long := ParseError(500, []byte(strings.Repeat("é", 800)))
	if len(long.Message) > maxErrorMessage || !strings.HasPrefix(strings.Repeat("é", 800), long.Message) {
		t.Errorf("long message cut to %d bytes", len(long.Message))
	}
}

func TestParseChunkErrors(t *testing.T) {
	for _, tc := range []struct {
		in      string
		wantErr bool
	}{
		{`{"choices":[{"delta":{"content":"an \"error\" here"}}]}`, false},
		{`{"choices":[],"error":null}`, false},
		{`{"object":"error","message":"m"}`, true},
		{`{"error":{"message":"m"}}`, true},
		{`{"error":"m"}`, true},
		{`{"id":"x","choices":[{"delta":{"content":""},"finish_reason":"error"}],"error":{"code":502,"message":"m"}}`, true},
	} {
		c, err := ParseChunk([]byte(tc.in))
		if err != nil || (c.Err != nil) != tc.wantErr {
			t.Errorf("%s: err %v, engine error %v", tc.in, err, c.Err)
		}
	}
	for _, bad := range []string{``, `[DONE]`, `[1]`, `"x"`, `null`, `{"choices":`} {
		if _, err := ParseChunk([]byte(bad)); !errors.Is(err, ErrNotJSONObject) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	// An odd type for one field leaves the others read.
	c, err := ParseChunk([]byte(`{"choices":{"weird":1},"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}`))
	if err != nil || c.Usage == nil || c.Usage.CompletionTokens != 3 {
		t.Errorf("odd choices: %v %+v", err, c.Usage)
	}
}

func TestStreamSkipsWhatClientsCannotRead(t *testing.T) {
	in := ": ping\r\n\r\nevent: ping\r\n\r\ndata:not json\r\n\r\ndata:{\"id\":\"a\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}]}\r\n\r\n"
	s := NewStream(strings.NewReader(in), FillerFor("/chat/completions", true, "r", "m", 5))
	c, _, err := s.Next()
	if err != nil || !bytes.HasPrefix(c, []byte(`{"id":"a"`)) {
		t.Fatalf("%s %v", c, err)
	}
	if _, _, err := s.Next(); err != io.EOF || s.Skipped != 1 || s.Done || !s.Complete() {
		t.Errorf("end %v skipped %d done %v complete %v", err, s.Skipped, s.Done, s.Complete())
	}
	// Two choices: complete only once both finished.
	two := "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\ndata: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"b\"},\"finish_reason\":null}]}\n\n"
	s = NewStream(strings.NewReader(two), Filler{})
	for {
		if _, _, err := s.Next(); err != nil {
			break
		}
	}
	if s.Complete() {
		t.Error("a stream with an unfinished choice counted complete")
	}
}

func TestFiller(t *testing.T) {
	f := Filler{ID: "chatcmpl-r", Object: ObjectChatChunk, Created: 7, Model: "m"}
	for _, tc := range []struct{ in, want string }{
		{`{"id":"x","object":"chat.completion.chunk","created":1,"model":"e","choices":[]}`, ``},
		{`{"choices":[],"model":"e"}`, `{"id":"chatcmpl-r","object":"chat.completion.chunk","created":7,"choices":[],"model":"e"}`},
		{`{}`, `{"id":"chatcmpl-r","object":"chat.completion.chunk","created":7,"model":"m"}`},
		{` { "choices" : [] }`, ` {"id":"chatcmpl-r","object":"chat.completion.chunk","created":7,"model":"m", "choices" : [] }`},
		// A nested "id" (tool calls have one) does not count as the chunk's own.
		{`{"created":1,"object":"chat.completion.chunk","model":"e","choices":[{"delta":{"tool_calls":[{"id":"call_1"}]}}]}`,
			`{"id":"chatcmpl-r","created":1,"object":"chat.completion.chunk","model":"e","choices":[{"delta":{"tool_calls":[{"id":"call_1"}]}}]}`},
	} {
		c, err := ParseChunk([]byte(tc.in))
		if err != nil {
			t.Fatal(err)
		}
		in := []byte(tc.in)
		out := f.Fill(in, &c)
		if tc.want == "" {
			if &out[0] != &in[0] {
				t.Errorf("%s: a conforming chunk was copied", tc.in)
			}
			continue
		}
		if string(out) != tc.want || !json.Valid(out) {
			t.Errorf("Fill(%s)\n got %s\nwant %s", tc.in, out, tc.want)
		}
	}
	// Embeddings: no id or created in OpenAI's schema.
	e := FillerFor("/embeddings", false, "r", "m", 7)
	c, _ := ParseChunk([]byte(`{"data":[]}`))
	if got := e.Fill([]byte(`{"data":[]}`), &c); string(got) != `{"object":"list","model":"m","data":[]}` {
		t.Errorf("embeddings: %s", got)
	}
}

func TestCanonicalModel(t *testing.T) {
	for in, want := range map[string]string{
		"llama3.2:latest":          "llama3.2",
		"llama3.2":                 "llama3.2",
		"qwen2.5:7b":               "qwen2.5:7b",
		"library/llama3.2:latest":  "library/llama3.2",
		"Qwen/Qwen2.5-7B-Instruct": "Qwen/Qwen2.5-7B-Instruct",
		"mlx-community/Llama-3.2-3B-Instruct-4bit": "mlx-community/Llama-3.2-3B-Instruct-4bit",
		"meta-llama/llama-3.1-8b-instruct:free":    "meta-llama/llama-3.1-8b-instruct:free",
		":latest":                                  ":latest",
		"x:latest:latest":                          "x:latest",
		"":                                         "",
	} {
		if got := CanonicalModel(in); got != want {
			t.Errorf("CanonicalModel(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestWithModel(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"model":"llama3.2","stream":true}`, `{"model":"llama3.2:latest","stream":true}`},
		{`{"messages":[{"model":"inner","content":"{\"model\":1}"}], "model" : "llama3.2" ,"n":1}`,
			`{"messages":[{"model":"inner","content":"{\"model\":1}"}], "model" : "llama3.2:latest" ,"n":1}`},
		{"{\n  \"temperature\": 0.5,\n  \"model\": \"llama3.2\"\n}", "{\n  \"temperature\": 0.5,\n  \"model\": \"llama3.2:latest\"\n}"},
	} {
		got, err := WithModel([]byte(tc.in), "llama3.2:latest")
		if err != nil || string(got) != tc.want {
			t.Errorf("WithModel(%s) = %s, %v", tc.in, got, err)
		}
	}
	for _, bad := range []string{`{"stream":true}`, `[]`, `{"a":`, ``, `{"model"}`} {
		if _, err := WithModel([]byte(bad), "m"); !errors.Is(err, ErrInvalidBody) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func FuzzWithModel(f *testing.F) {
	for _, s := range []string{`{"model":"a"}`, `{"x":[{"model":"b"}],"model":"a"}`, `{"s":"\"model\"","model":null}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := WithModel(in, "z/y:x")
		if err != nil {
			return
		}
		var before, after map[string]any
		if json.Unmarshal(in, &before) != nil {
			return // the scanner may accept what the decoder refuses; only valid input is checked
		}
		if err := json.Unmarshal(out, &after); err != nil || after["model"] != "z/y:x" {
			t.Fatalf("WithModel(%s) = %s", in, out)
		}
	})
}

func TestEstimateUsage(t *testing.T) {
	for _, tc := range []struct {
		name, path, body string
		chars, chunks    int64
		want             Usage
	}{
		{"chat", "/chat/completions", `{"messages":[{"role":"system","content":"abcd"},{"role":"user","content":"héllo"}]}`, 9, 2,
			Usage{PromptTokens: 3, CompletionTokens: 3, TotalTokens: 6}}, // ceil(9/4)=3 prompt; max(2, ceil(9/4)=3)
		{"chat parts", "/chat/completions", `{"messages":[{"role":"user","content":[{"type":"text","text":"abcdefgh"},{"type":"image_url","image_url":{"url":"data:..."}}]}]}`, 0, 0,
			Usage{PromptTokens: 2, TotalTokens: 2}},
		{"chunks floor", "/chat/completions", `{"messages":[{"content":"a"}]}`, 4, 3, Usage{PromptTokens: 1, CompletionTokens: 3, TotalTokens: 4}},
		{"completion string", "/completions", `{"prompt":"abcdefghi"}`, 1, 0, Usage{PromptTokens: 3, CompletionTokens: 1, TotalTokens: 4}},
		{"completion strings", "/completions", `{"prompt":["abcd","ef"]}`, 0, 0, Usage{PromptTokens: 2, TotalTokens: 2}},
		{"completion token ids", "/completions", `{"prompt":[1,2,3]}`, 0, 0, Usage{PromptTokens: 3, TotalTokens: 3}},
		{"embeddings nested ids", "/embeddings", `{"input":[[1,2],[3]]}`, 0, 0, Usage{PromptTokens: 3, TotalTokens: 3}},
		{"embeddings string", "/embeddings", `{"input":"abcde"}`, 0, 0, Usage{PromptTokens: 2, TotalTokens: 2}},
		{"docs/usage-estimation.md example", "/chat/completions", `{"messages":[{"role":"user","content":"Say hello, please"}]}`, 13, 4,
			Usage{PromptTokens: 5, CompletionTokens: 4, TotalTokens: 9}},
		{"odd types", "/chat/completions", `{"messages":"nope"}`, 0, 0, Usage{}},
		{"not json", "/chat/completions", `nope`, 8, 0, Usage{CompletionTokens: 2, TotalTokens: 2}},
	} {
		if got := EstimateUsage(tc.path, []byte(tc.body), tc.chars, tc.chunks); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// TestEstimateUnderGatewayCaps checks the estimate never exceeds what the
// gateway lets a node bill: a prompt token per request byte, a completion
// token per delivered byte.
func TestEstimateUnderGatewayCaps(t *testing.T) {
	for _, body := range []string{
		`{"messages":[{"content":"a"}]}`, `{"prompt":[1,2,3,4,5,6,7,8,9]}`, `{"input":[[1],[2],[3]]}`,
		`{"messages":[{"content":"日本語のテキスト"}]}`,
	} {
		for _, path := range []string{"/chat/completions", "/completions", "/embeddings"} {
			if u := EstimateUsage(path, []byte(body), 0, 0); u.PromptTokens > int64(len(body)) {
				t.Errorf("%s %s: %d prompt tokens for %d bytes", path, body, u.PromptTokens, len(body))
			}
		}
	}
}

func TestSSEReaderErrorEvents(t *testing.T) {
	in := "data: a\n\nerror: {\"code\":500,\"message\":\"m\"}\n\nevent: ping\n\ndata: b\n\nevent: error\ndata: c\n\n"
	s := NewSSEReader(strings.NewReader(in))
	var got []string
	for {
		d, err := s.Next()
		if err != nil {
			break
		}
		got = append(got, s.Event()+"="+string(d))
	}
	want := []string{"=a", `error={"code":500,"message":"m"}`, "=b", "error=c"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

// BenchmarkStreamNext measures the adapter's cost per conforming chunk:
// one decode, no copy, no re-encode.
func BenchmarkStreamNext(b *testing.B) {
	benchStream(b, `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"llama3.2:latest","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":" word"},"finish_reason":null}]}`+"\n\n")
}

// BenchmarkStreamNextFill is the same for chunks missing id and created.
func BenchmarkStreamNextFill(b *testing.B) {
	benchStream(b, `data: {"object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":" word"},"finish_reason":null}]}`+"\n\n")
}

// benchStream reads a stream of 1,000 copies of chunk through Stream.
func benchStream(b *testing.B, chunk string) {
	body := strings.Repeat(chunk, 1000)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		s := NewStream(strings.NewReader(body), FillerFor("/chat/completions", true, "r", "m", 1))
		for {
			if _, _, err := s.Next(); err != nil {
				break
			}
		}
	}
}

// FuzzWithUsage checks WithUsage's splice against decoding: the body means
// the same, but for include_usage set on a streamed request.
func FuzzWithUsage(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","stream":true}`, `{"stream":true,"stream_options":null}`,
		`{"stream":true,"stream_options":{"a":1}}`, `{"stream":true,"stream_options":{"include_usage":false}}`,
		`{"stream":true,"stream_options":{}}`, `{"stream":false}`, `{ "stream" : true , "x":[{"stream":false}] }`,
		`{"stream":true,"stream":false}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var before map[string]any
		if json.Unmarshal(in, &before) != nil || before == nil {
			return
		}
		out, err := WithUsage(in)
		so, isObj := before["stream_options"].(map[string]any)
		if before["stream"] == true && before["stream_options"] != nil && !isObj {
			if !errors.Is(err, ErrInvalidBody) {
				t.Fatalf("WithUsage(%s) = %s, %v", in, out, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("WithUsage(%s): %v", in, err)
		}
		if before["stream"] == true {
			if so == nil {
				so = map[string]any{}
			}
			so["include_usage"] = true
			before["stream_options"] = so
		}
		var after map[string]any
		if err := json.Unmarshal(out, &after); err != nil || fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatalf("WithUsage(%s) = %s", in, out)
		}
	})
}

// BenchmarkWithUsage measures the rewrite of a streamed request with a
// 120 KB prompt: one scan and one copy, no decode.
func BenchmarkWithUsage(b *testing.B) {
	body := fmt.Appendf(nil, `{"model":"m","stream":true,"messages":[{"role":"user","content":%q}]}`, strings.Repeat("lorem ipsum ", 10000))
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := WithUsage(body); err != nil {
			b.Fatal(err)
		}
	}
}
