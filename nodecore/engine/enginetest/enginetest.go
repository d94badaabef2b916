// Package enginetest serves test engines that answer the OpenAI API the way
// real engines do, quirks included, so the node's upstream adapter is tested
// against what it meets in the field rather than against OpenAI's schema.
//
// Each [Flavor] reproduces one engine's documented wire behaviour:
//
//   - [Ollama]: ids like "llama3.2:latest" owned by "library"; a streamed
//     usage chunk (choices:[]) only when stream_options.include_usage is
//     sent; unknown models answered 404 with Ollama's native
//     {"error":"model \"x\" not found, try pulling it first"}.
//   - [NoUsage]: older Ollama and LM Studio: never any usage, streamed or not.
//   - [LlamaCpp]: llama-server serves its one model whatever the request
//     names; the last streamed chunk carries the last content delta, the
//     finish_reason, usage and a "timings" object together; middle chunks
//     lack "created" and "object"; non-streamed answers carry "timings";
//     errors are {"error":{"code":400,"message":..,"type":..}} (numeric code).
//   - [VLLM]: ids like "Qwen/Qwen2.5-7B-Instruct"; a usage chunk with
//     choices:[] when asked; errors as {"object":"error",..,"code":400}, and
//     a mid-stream failure as such a chunk followed by [DONE].
//   - [Cloud]: OpenRouter style: `: OPENROUTER PROCESSING` and `: keep-alive`
//     comments between chunks, `data:` without a space, \r\n line endings,
//     usage in the last chunk, a mid-stream failure as a chunk with a
//     top-level "error" and finish_reason "error".
//   - [MLX]: ids like "mlx-community/Llama-3.2-3B-Instruct-4bit"; the stream
//     ends after the finish_reason chunk without [DONE]; no usage anywhere,
//     streamed or not (as some MLX servers).
//   - [Bare]: a minimal server whose chunks and answers have no "id",
//     "created" or "object".
//
// The engine is a real HTTP server on loopback (httptest).
package enginetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"
)

// Flavor names the engine a test engine imitates.
type Flavor string

// The flavors; see the package documentation.
const (
	Ollama   Flavor = "ollama"
	NoUsage  Flavor = "no-usage"
	LlamaCpp Flavor = "llama.cpp"
	VLLM     Flavor = "vllm"
	Cloud    Flavor = "cloud"
	MLX      Flavor = "mlx"
	Bare     Flavor = "bare"
)

// DefaultReply is what every test engine generates unless told otherwise:
// one piece per streamed chunk.
var DefaultReply = []string{"Hello", ", ", "wörld", "!"}

// RejectMaxTokens is a max_tokens above which an engine refuses the request
// before answering (as vLLM and llama.cpp refuse a prompt longer than their
// context), with a 400 in its own error shape.
const RejectMaxTokens = 100_000

// Config configures a test engine.
type Config struct {
	Flavor Flavor
	// Models are the ids /v1/models lists; nil means the flavor's usual ids.
	Models []string
	// Reply is the generated text, one piece per chunk; nil = DefaultReply.
	Reply []string
	// FailAfter, when positive, makes a streamed answer fail after that
	// many content chunks, in the flavor's way. FailAtStart fails before
	// the first chunk.
	FailAfter   int
	FailAtStart bool
	// FailCode is the numeric code of a mid-stream failure (default 500).
	FailCode int
	// OldErrors makes a llama.cpp engine send its mid-stream failure as an
	// `error:` line, as older llama-server builds did.
	OldErrors bool
	// NoDoneAfterError makes a vLLM engine end with EOF, not [DONE], after
	// a mid-stream failure.
	NoDoneAfterError bool
	// Gate, when set, holds every answer before its first content until
	// Gate is closed (or the request is cancelled).
	Gate <-chan struct{}
}

// Request is one call an engine received.
type Request struct {
	Path  string
	Model string
	Body  []byte
}

// Engine is a running test engine.
type Engine struct {
	*httptest.Server
	cfg Config

	mu       sync.Mutex
	requests []Request
}

// Start serves a test engine on loopback; Close stops it.
func Start(cfg Config) *Engine {
	if cfg.Models == nil {
		cfg.Models = DefaultModels(cfg.Flavor)
	}
	if cfg.Reply == nil {
		cfg.Reply = DefaultReply
	}
	if cfg.FailCode == 0 {
		cfg.FailCode = 500
	}
	e := &Engine{cfg: cfg}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/models", e.models)
	mux.HandleFunc("POST /v1/chat/completions", e.generate)
	mux.HandleFunc("POST /v1/completions", e.generate)
	mux.HandleFunc("POST /v1/embeddings", e.embeddings)
	e.Server = httptest.NewServer(mux)
	return e
}

// BaseURL is the engine's OpenAI base URL, ".../v1".
func (e *Engine) BaseURL() string { return e.URL + "/v1" }

// Requests returns the calls received so far.
func (e *Engine) Requests() []Request {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Request(nil), e.requests...)
}

// DefaultModels are the ids a flavor lists when Config.Models is nil.
func DefaultModels(f Flavor) []string {
	switch f {
	case Ollama, NoUsage:
		return []string{"llama3.2:latest", "qwen2.5:7b"}
	case LlamaCpp:
		return []string{"bartowski/Llama-3.2-3B-Instruct-GGUF:Q4_K_M"}
	case VLLM:
		return []string{"Qwen/Qwen2.5-7B-Instruct"}
	case Cloud:
		return []string{"openai/gpt-4o-mini", "meta-llama/llama-3.1-8b-instruct:free"}
	case MLX:
		return []string{"mlx-community/Llama-3.2-3B-Instruct-4bit"}
	}
	return []string{"bare-1"}
}

func (e *Engine) ownedBy() string {
	switch e.cfg.Flavor {
	case Ollama, NoUsage:
		return "library"
	case LlamaCpp:
		return "llamacpp"
	case VLLM:
		return "vllm"
	case Cloud:
		return "openai"
	}
	return "system"
}

func (e *Engine) models(w http.ResponseWriter, _ *http.Request) {
	data := make([]map[string]any, len(e.cfg.Models))
	for i, m := range e.cfg.Models {
		data[i] = map[string]any{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": e.ownedBy()}
	}
	writeJSON(w, 200, map[string]any{"object": "list", "data": data})
}

// request is what a test engine reads of a call.
type request struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	MaxTokens     int    `json:"max_tokens"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Messages []struct {
		Content any `json:"content"`
	} `json:"messages"`
	Prompt any `json:"prompt"`
	Input  any `json:"input"`
}

// read decodes and records a call; false means an error was answered.
func (e *Engine) read(w http.ResponseWriter, r *http.Request) (request, bool) {
	var body bytes.Buffer
	_, _ = body.ReadFrom(r.Body)
	var req request
	if err := json.Unmarshal(body.Bytes(), &req); err != nil {
		e.fail(w, 400, "invalid JSON: "+err.Error())
		return req, false
	}
	e.mu.Lock()
	e.requests = append(e.requests, Request{Path: strings.TrimPrefix(r.URL.Path, "/v1"), Model: req.Model, Body: body.Bytes()})
	e.mu.Unlock()
	if e.cfg.Flavor != LlamaCpp && !e.serves(req.Model) { // llama-server answers whatever model is named
		e.notFound(w, req.Model)
		return req, false
	}
	if req.MaxTokens > RejectMaxTokens {
		e.fail(w, 400, fmt.Sprintf("max_tokens %d exceeds the model's context length of 4096 tokens", req.MaxTokens))
		return req, false
	}
	return req, true
}

func (e *Engine) serves(model string) bool {
	for _, m := range e.cfg.Models {
		if m == model {
			return true
		}
	}
	return false
}

// notFound answers an unknown model the flavor's way.
func (e *Engine) notFound(w http.ResponseWriter, model string) {
	switch e.cfg.Flavor {
	case Ollama, NoUsage:
		writeJSON(w, 404, map[string]any{"error": fmt.Sprintf("model %q not found, try pulling it first", model)})
	case VLLM:
		writeJSON(w, 404, map[string]any{"object": "error", "message": fmt.Sprintf("The model `%s` does not exist.", model),
			"type": "NotFoundError", "param": nil, "code": 404})
	default:
		writeJSON(w, 404, map[string]any{"error": map[string]any{"message": "model not found: " + model,
			"type": "invalid_request_error", "param": "model", "code": "model_not_found"}})
	}
}

// fail answers a refused request the flavor's way.
func (e *Engine) fail(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, e.errorBody(status, msg))
}

// errorBody is the flavor's error shape, for a status answer or a chunk.
func (e *Engine) errorBody(code int, msg string) map[string]any {
	switch e.cfg.Flavor {
	case VLLM:
		typ := "BadRequestError"
		if code >= 500 {
			typ = "InternalServerError"
		}
		return map[string]any{"object": "error", "message": msg, "type": typ, "param": nil, "code": code}
	case LlamaCpp:
		typ := "invalid_request_error"
		if code >= 500 {
			typ = "server_error"
		}
		return map[string]any{"error": map[string]any{"code": code, "message": msg, "type": typ}}
	case Ollama, NoUsage:
		return map[string]any{"error": msg}
	}
	return map[string]any{"error": map[string]any{"message": msg, "type": "server_error", "param": nil, "code": code}}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// waitGate holds an answer until the gate opens; false if the caller left.
func (e *Engine) waitGate(r *http.Request) bool {
	if e.cfg.Gate == nil {
		return true
	}
	select {
	case <-e.cfg.Gate:
		return true
	case <-r.Context().Done():
		return false
	}
}

// usage counts prompt words (whitespace-separated) and one token per
// reply piece.
func (e *Engine) usage(req request) map[string]any {
	var text string
	for _, v := range []any{req.Prompt, req.Input} {
		if v != nil {
			text += " " + fmt.Sprint(v)
		}
	}
	for _, m := range req.Messages {
		text += " " + fmt.Sprint(m.Content)
	}
	p, c := len(strings.Fields(text)), len(e.cfg.Reply)
	return map[string]any{"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
}

func (e *Engine) embeddings(w http.ResponseWriter, r *http.Request) {
	req, ok := e.read(w, r)
	if !ok {
		return
	}
	out := map[string]any{
		"object": "list", "model": req.Model,
		"data": []any{map[string]any{"object": "embedding", "index": 0, "embedding": []float64{0.6, 0.8}}},
	}
	if e.cfg.Flavor != NoUsage && e.cfg.Flavor != MLX {
		u := e.usage(req)
		out["usage"] = map[string]any{"prompt_tokens": u["prompt_tokens"], "total_tokens": u["prompt_tokens"]}
	}
	if e.cfg.Flavor == Bare {
		delete(out, "object")
	}
	writeJSON(w, 200, out)
}

func (e *Engine) generate(w http.ResponseWriter, r *http.Request) {
	req, ok := e.read(w, r)
	if !ok {
		return
	}
	chat := strings.HasSuffix(r.URL.Path, "/chat/completions")
	if !e.waitGate(r) {
		return
	}
	if req.Stream {
		e.stream(w, r, req, chat)
		return
	}
	writeJSON(w, 200, e.whole(req, chat))
}

// whole is a non-streamed answer.
func (e *Engine) whole(req request, chat bool) map[string]any {
	text := strings.Join(e.cfg.Reply, "")
	choice := map[string]any{"index": 0, "finish_reason": "stop"}
	out := map[string]any{"id": "chatcmpl-42", "object": "chat.completion", "created": time.Now().Unix(), "model": req.Model}
	if chat {
		choice["message"] = map[string]any{"role": "assistant", "content": text}
	} else {
		choice["text"] = text
		out["id"], out["object"] = "cmpl-42", "text_completion"
	}
	out["choices"] = []any{choice}
	switch e.cfg.Flavor {
	case NoUsage, MLX:
	case LlamaCpp:
		out["usage"] = e.usage(req)
		out["timings"] = timings(len(e.cfg.Reply))
	case Bare:
		delete(out, "id")
		delete(out, "object")
		delete(out, "created")
		out["usage"] = e.usage(req)
	default:
		out["usage"] = e.usage(req)
	}
	return out
}

func timings(n int) map[string]any {
	return map[string]any{"prompt_n": 3, "prompt_ms": 1.25, "predicted_n": n, "predicted_ms": 4.5, "predicted_per_second": 222.2}
}

// sse writes one event in the flavor's framing.
type sse struct {
	w     http.ResponseWriter
	cloud bool
}

func (s sse) raw(line string) {
	if s.cloud {
		line = strings.ReplaceAll(line, "\n", "\r\n")
	}
	_, _ = s.w.Write([]byte(line))
	http.NewResponseController(s.w).Flush()
}

func (s sse) data(v any) {
	b, ok := v.([]byte)
	if !ok {
		b, _ = json.Marshal(v)
	}
	if s.cloud {
		s.raw(": keep-alive\n\n")
		s.raw("data:" + string(b) + "\n\n")
		return
	}
	s.raw("data: " + string(b) + "\n\n")
}

// stream writes a streamed answer, quirks included.
func (e *Engine) stream(w http.ResponseWriter, r *http.Request, req request, chat bool) {
	f := e.cfg.Flavor
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(200)
	out := sse{w: w, cloud: f == Cloud}
	if f == Cloud {
		out.raw(": OPENROUTER PROCESSING\n\n")
	}
	wantUsage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
	created := time.Now().Unix()
	chunk := func(content *string, finish any, first bool) map[string]any {
		c := map[string]any{"id": "chatcmpl-42", "object": "chat.completion.chunk", "created": created, "model": req.Model}
		choice := map[string]any{"index": 0, "finish_reason": finish}
		if chat {
			delta := map[string]any{}
			if first || f == Ollama || f == NoUsage {
				delta["role"] = "assistant" // Ollama repeats the role on every chunk
			}
			switch {
			case content != nil:
				delta["content"] = *content
			case first && f == LlamaCpp:
				delta["content"] = nil
			case first || f == Ollama || f == NoUsage || f == VLLM:
				delta["content"] = ""
			}
			choice["delta"] = delta
		} else {
			c["id"], c["object"] = "cmpl-42", "text_completion"
			text := ""
			if content != nil {
				text = *content
			}
			choice["text"] = text
		}
		if f == VLLM {
			choice["logprobs"] = nil
		}
		c["choices"] = []any{choice}
		switch f {
		case Ollama, NoUsage:
			c["system_fingerprint"] = "fp_ollama"
		case LlamaCpp:
			c["system_fingerprint"] = "b5000-deadbeef"
			if !first && finish == nil {
				delete(c, "created")
				delete(c, "object")
			}
		case Bare:
			delete(c, "id")
			delete(c, "created")
			delete(c, "object")
		}
		return c
	}
	if e.cfg.FailAtStart {
		e.streamFailure(out, chunk)
		return
	}
	if chat && f != Bare {
		out.data(chunk(nil, nil, true)) // the role-only opening chunk
	}
	reply := e.cfg.Reply
	for i, piece := range reply {
		if r.Context().Err() != nil {
			return
		}
		if e.cfg.FailAfter > 0 && i == e.cfg.FailAfter {
			e.streamFailure(out, chunk)
			return
		}
		if f == LlamaCpp && i == len(reply)-1 {
			// llama.cpp: last words, finish_reason, usage and timings in one chunk.
			c := chunk(&piece, "stop", false)
			c["usage"] = e.usage(req)
			c["timings"] = timings(len(reply))
			out.data(c)
			out.data([]byte("[DONE]"))
			return
		}
		out.data(chunk(&piece, nil, false))
	}
	last := chunk(nil, "stop", false)
	if f == Cloud {
		last["usage"] = e.usage(req) // OpenRouter: usage on the finishing chunk
	}
	out.data(last)
	if f == MLX {
		return // no usage, no [DONE]: the connection just ends
	}
	if wantUsage && (f == Ollama || f == VLLM || f == Bare) {
		u := chunk(nil, nil, false)
		u["choices"] = []any{}
		u["usage"] = e.usage(req)
		out.data(u)
	}
	out.data([]byte("[DONE]"))
}

// streamFailure ends a stream with the flavor's mid-stream error.
func (e *Engine) streamFailure(out sse, chunk func(*string, any, bool) map[string]any) {
	const msg = "the engine failed while generating"
	code := e.cfg.FailCode
	switch e.cfg.Flavor {
	case VLLM:
		out.data(e.errorBody(code, msg))
		if !e.cfg.NoDoneAfterError {
			out.data([]byte("[DONE]"))
		}
	case LlamaCpp:
		body := e.errorBody(code, msg)
		if e.cfg.OldErrors {
			b, _ := json.Marshal(body["error"])
			out.raw("error: " + string(b) + "\n\n")
			return
		}
		out.data(body)
	case Cloud:
		c := chunk(new(string), "error", false)
		c["error"] = map[string]any{"code": code, "message": msg}
		out.data(c)
		out.data([]byte("[DONE]"))
	default:
		out.data(map[string]any{"error": map[string]any{"message": msg, "type": "server_error", "param": nil, "code": nil}})
	}
}
