package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// genRequest is a validated chat or completion request.
type genRequest struct {
	model        string
	prompt       string // text the generator is seeded from
	promptTokens int64
	maxTokens    int
	finish       string // "length" when the client set the limit, else "stop"
	stream       bool
	includeUsage bool
}

// usage returns the usage of a request that generated n tokens.
func (g *genRequest) usage(n int) *Usage {
	return &Usage{
		PromptTokens:     g.promptTokens,
		CompletionTokens: int64(n),
		TotalTokens:      g.promptTokens + int64(n),
	}
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type chatRequest struct {
	Model               string           `json:"model"`
	Messages            []chatRequestMsg `json:"messages"`
	Stream              bool             `json:"stream"`
	StreamOptions       *streamOptions   `json:"stream_options"`
	MaxTokens           *int             `json:"max_tokens"`
	MaxCompletionTokens *int             `json:"max_completion_tokens"`
}

type chatRequestMsg struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type completionRequest struct {
	Model         string          `json:"model"`
	Prompt        json.RawMessage `json:"prompt"`
	Stream        bool            `json:"stream"`
	StreamOptions *streamOptions  `json:"stream_options"`
	MaxTokens     *int            `json:"max_tokens"`
}

// decodeBody reads and decodes a JSON request body into v, writing a 400
// (or 413) and returning false when it cannot.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, errTypeInvalidRequest,
				fmt.Sprintf("request body larger than %d bytes", tooBig.Limit), "", "")
			return false
		}
		badRequest(w, "could not read the request body: "+err.Error(), "")
		return false
	}
	if err := json.Unmarshal(body, v); err != nil {
		badRequest(w, "could not parse the JSON body of your request: "+err.Error(), "")
		return false
	}
	return true
}

// pickMaxTokens validates the requested limit: it returns the limit, whether
// the client set it, and false after writing a 400 when it is out of range.
func (s *Synthetic) pickMaxTokens(w http.ResponseWriter, maxTokens, maxCompletionTokens *int) (int, bool, bool) {
	v, param := maxCompletionTokens, "max_completion_tokens"
	if v == nil {
		v, param = maxTokens, "max_tokens"
	}
	if v == nil {
		return s.cfg.DefaultMaxTokens, false, true
	}
	if *v < 1 || *v > s.cfg.MaxTokens {
		badRequest(w, fmt.Sprintf("%s is %d; it must be between 1 and %d on this synthetic engine",
			param, *v, s.cfg.MaxTokens), param)
		return 0, false, false
	}
	return *v, true, true
}

// contentText returns the text of a chat message content: a string, an
// array of parts whose {type:"text"} texts are joined with "\n", or null.
func contentText(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	switch raw[0] {
	case '"':
		var s string
		err := json.Unmarshal(raw, &s)
		return s, err
	case '[':
		var parts []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		if err := json.Unmarshal(raw, &parts); err != nil {
			return "", err
		}
		var texts []string
		for _, p := range parts {
			if p.Type == "text" {
				texts = append(texts, p.Text)
			}
		}
		return strings.Join(texts, "\n"), nil
	}
	return "", errors.New("content must be a string, an array of content parts, or null")
}

// serveChat answers POST /v1/chat/completions.
func (s *Synthetic) serveChat(w http.ResponseWriter, r *http.Request) {
	var req chatRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Model == "" {
		badRequest(w, "you must provide a model parameter", "model")
		return
	}
	if len(req.Messages) == 0 {
		badRequest(w, "messages must be a non-empty array", "messages")
		return
	}
	var prompt strings.Builder
	var promptTokens int64
	for i, m := range req.Messages {
		text, err := contentText(m.Content)
		if err != nil {
			badRequest(w, fmt.Sprintf("messages[%d].content: %v", i, err), fmt.Sprintf("messages[%d].content", i))
			return
		}
		promptTokens += countWords(text) + 1
		prompt.WriteString(m.Role)
		prompt.WriteByte(':')
		prompt.WriteString(text)
		prompt.WriteByte('\n')
	}
	n, limited, ok := s.pickMaxTokens(w, req.MaxTokens, req.MaxCompletionTokens)
	if !ok || !s.checkModel(w, req.Model) || s.fail(w, r.URL.Path) {
		return
	}
	g := newGenRequest(req.Model, prompt.String(), promptTokens, n, limited, req.Stream, req.StreamOptions)
	if g.stream {
		s.streamChat(w, r, g)
		return
	}
	s.completeChat(w, r, g)
}

// parsePrompt returns the seed text and token count of a completions
// prompt: a string, an array of strings, an array of token ids, or an array
// of arrays of token ids.
func parsePrompt(raw json.RawMessage) (string, int64, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", 0, errors.New("you must provide a prompt")
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if s == "" {
			return "", 0, errors.New("prompt must not be empty")
		}
		return s, countWords(s), nil
	}
	var ss []string
	if json.Unmarshal(raw, &ss) == nil {
		if len(ss) == 0 {
			return "", 0, errors.New("prompt must not be empty")
		}
		var n int64
		for _, p := range ss {
			n += countWords(p)
		}
		return strings.Join(ss, "\n"), n, nil
	}
	var ids []int64
	if json.Unmarshal(raw, &ids) == nil {
		if len(ids) == 0 {
			return "", 0, errors.New("prompt must not be empty")
		}
		return string(raw), int64(len(ids)), nil
	}
	var idss [][]int64
	if json.Unmarshal(raw, &idss) == nil {
		var n int64
		for _, ids := range idss {
			n += int64(len(ids))
		}
		if n == 0 {
			return "", 0, errors.New("prompt must not be empty")
		}
		return string(raw), n, nil
	}
	return "", 0, errors.New("prompt must be a string, an array of strings, or an array of token ids")
}

// serveCompletions answers POST /v1/completions. An array prompt is
// answered as one prompt with a single choice.
func (s *Synthetic) serveCompletions(w http.ResponseWriter, r *http.Request) {
	var req completionRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Model == "" {
		badRequest(w, "you must provide a model parameter", "model")
		return
	}
	prompt, promptTokens, err := parsePrompt(req.Prompt)
	if err != nil {
		badRequest(w, err.Error(), "prompt")
		return
	}
	n, limited, ok := s.pickMaxTokens(w, req.MaxTokens, nil)
	if !ok || !s.checkModel(w, req.Model) || s.fail(w, r.URL.Path) {
		return
	}
	g := newGenRequest(req.Model, prompt, promptTokens, n, limited, req.Stream, req.StreamOptions)
	if g.stream {
		s.streamText(w, r, g)
		return
	}
	s.completeText(w, r, g)
}

// newGenRequest assembles a validated generation request.
func newGenRequest(model, prompt string, promptTokens int64, n int, limited, stream bool, so *streamOptions) *genRequest {
	finish := "stop"
	if limited {
		finish = "length"
	}
	return &genRequest{
		model:        model,
		prompt:       prompt,
		promptTokens: atLeastOne(promptTokens),
		maxTokens:    n,
		finish:       finish,
		stream:       stream,
		includeUsage: stream && so != nil && so.IncludeUsage,
	}
}

// generationTime is how long a non-streamed answer of n tokens takes: the
// same TTFT and pacing a stream would see.
func (s *Synthetic) generationTime(n int) time.Duration {
	return s.cfg.TTFT + time.Duration(n-1)*s.interval
}

// completeChat writes a non-streamed chat.completion.
func (s *Synthetic) completeChat(w http.ResponseWriter, r *http.Request, g *genRequest) {
	var t *time.Timer
	if err := sleep(r.Context(), &t, s.generationTime(g.maxTokens)); err != nil {
		s.logDone(r, g, 0, err)
		return
	}
	writeJSON(w, http.StatusOK, chatCompletion{
		ID:                newID("chatcmpl-"),
		Object:            "chat.completion",
		Created:           time.Now().Unix(),
		Model:             g.model,
		SystemFingerprint: "synthetic",
		Choices: []chatChoice{{
			Message:      chatMessage{Role: "assistant", Content: newTextGen(g.model, g.prompt).text(g.maxTokens)},
			FinishReason: g.finish,
		}},
		Usage: *g.usage(g.maxTokens),
	})
	s.logDone(r, g, g.maxTokens, nil)
}

// completeText writes a non-streamed text_completion.
func (s *Synthetic) completeText(w http.ResponseWriter, r *http.Request, g *genRequest) {
	var t *time.Timer
	if err := sleep(r.Context(), &t, s.generationTime(g.maxTokens)); err != nil {
		s.logDone(r, g, 0, err)
		return
	}
	writeJSON(w, http.StatusOK, textCompletion{
		ID:                newID("cmpl-"),
		Object:            "text_completion",
		Created:           time.Now().Unix(),
		Model:             g.model,
		SystemFingerprint: "synthetic",
		Choices: []textChoice{{
			Text:         newTextGen(g.model, g.prompt).text(g.maxTokens),
			FinishReason: &g.finish,
		}},
		Usage: g.usage(g.maxTokens),
	})
	s.logDone(r, g, g.maxTokens, nil)
}

// logDone logs the end of a generation request.
func (s *Synthetic) logDone(r *http.Request, g *genRequest, generated int, err error) {
	s.log.Debug("synthetic engine: request done", "path", r.URL.Path, "model", g.model,
		"stream", g.stream, "prompt_tokens", g.promptTokens, "completion_tokens", generated, "err", err)
}
