package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// ErrUpstreamStatus is wrapped by every [*StatusError]: the engine answered
// with a non-2xx status.
var ErrUpstreamStatus = errors.New("engine: upstream answered an error status")

// ErrInvalidBody is returned (wrapped) by [WithUsage] and [Upstream.Do] when
// a request body is not a JSON object.
var ErrInvalidBody = errors.New("engine: request body is not a JSON object")

// StatusError is a non-2xx answer from an engine to a call whose response
// the adapter reads itself (such as [Upstream.Models]).
type StatusError struct {
	// StatusCode is the HTTP status the engine answered.
	StatusCode int
	// Message is the engine's OpenAI error message, or the start of its body.
	Message string
}

// Error implements error.
func (e *StatusError) Error() string {
	return fmt.Sprintf("engine: upstream answered %d: %s", e.StatusCode, e.Message)
}

// Unwrap makes errors.Is(err, ErrUpstreamStatus) hold.
func (e *StatusError) Unwrap() error { return ErrUpstreamStatus }

// defaultClient is shared by every Upstream without its own Client. It has
// no overall timeout, because streams run as long as generation does.
var defaultClient = &http.Client{
	Transport: &http.Transport{
		Proxy: http.ProxyFromEnvironment, // operators behind a proxy reach cloud engines; loopback bypasses it
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,  // an engine that does not accept in 5s is down
			KeepAlive: 30 * time.Second, // notice dead peers on long idle streams
		}).DialContext,
		ForceAttemptHTTP2:     true,             // cloud providers speak HTTP/2
		TLSHandshakeTimeout:   10 * time.Second, // bounded like the dial
		ResponseHeaderTimeout: 60 * time.Second, // a slow engine may queue a request before answering headers
		ExpectContinueTimeout: 1 * time.Second,  // the net/http default
		MaxIdleConns:          256,              // a node talks to one or a few engines
		MaxIdleConnsPerHost:   64,               // up to a node's concurrent streams reuse connections
		IdleConnTimeout:       90 * time.Second, // the net/http default
		DisableCompression:    true,             // SSE must arrive token by token, not gzip-buffered
		ReadBufferSize:        32 << 10,         // fewer reads per chunk-heavy stream
		WriteBufferSize:       32 << 10,         // large prompts in fewer writes
	},
}

// Upstream is an OpenAI-compatible engine a node serves from: Ollama,
// llama.cpp, vLLM, LM Studio, a cloud provider, or the synthetic engine.
// Its zero Client means a shared, tuned client. It is safe for concurrent use.
type Upstream struct {
	// BaseURL is the engine's OpenAI base, e.g. http://127.0.0.1:11434/v1;
	// a trailing slash is tolerated.
	BaseURL string
	// Token is an optional bearer token sent as Authorization; never logged.
	Token string
	// Client sends the requests; nil means a shared client with a 5s dial
	// timeout, a 60s response-header timeout and no overall timeout.
	Client *http.Client
}

// Model is one entry of an engine's /models list.
type Model struct {
	ID      string `json:"id"`
	OwnedBy string `json:"owned_by"`
}

// client returns the HTTP client to use.
func (u *Upstream) client() *http.Client {
	if u.Client != nil {
		return u.Client
	}
	return defaultClient
}

// url joins BaseURL and path with exactly one slash.
func (u *Upstream) url(path string) string {
	return strings.TrimRight(u.BaseURL, "/") + "/" + strings.TrimLeft(path, "/")
}

// newRequest builds a request with the bearer token, if any.
func (u *Upstream) newRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u.url(path), body)
	if err != nil {
		return nil, fmt.Errorf("engine: build request: %w", err)
	}
	if u.Token != "" {
		req.Header.Set("Authorization", "Bearer "+u.Token)
	}
	return req, nil
}

// Models lists the engine's models (GET {BaseURL}/models). A non-2xx answer
// is a *StatusError.
func (u *Upstream) Models(ctx context.Context) ([]Model, error) {
	req, err := u.newRequest(ctx, http.MethodGet, "/models", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := u.client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("engine: list models: %w", err)
	}
	defer drainClose(resp.Body)
	if resp.StatusCode/100 != 2 {
		return nil, u.redactErr(readStatusError(resp))
	}
	var list struct {
		Data []Model `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&list); err != nil {
		return nil, fmt.Errorf("engine: decode models: %w", err)
	}
	return list.Data, nil
}

// Do sends body to {BaseURL}{path} (path like "/chat/completions") as a POST
// with Content-Type application/json, after [WithUsage]. It returns the raw
// response whatever its status; the caller closes its Body.
func (u *Upstream) Do(ctx context.Context, path string, body []byte) (*http.Response, error) {
	body, err := WithUsage(body)
	if err != nil {
		return nil, err
	}
	req, err := u.newRequest(ctx, http.MethodPost, path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := u.client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("engine: post %s: %w", path, err)
	}
	return resp, nil
}

// WithUsage returns body rewritten so the engine always reports usage: when
// "stream" is true it sets "stream_options":{"include_usage":true}, keeping
// other stream_options keys; otherwise body is returned unchanged. The body
// is edited in place of the one value, never decoded and re-encoded, so
// every other byte passes through and a long prompt costs one scan. A body
// that is not a JSON object is an error wrapping [ErrInvalidBody].
func WithUsage(body []byte) ([]byte, error) {
	stream, opts := [2]int{-1, -1}, [2]int{-1, -1}
	if !eachTopLevel(body, func(k []byte, s, e int) {
		switch string(k) {
		case "stream":
			stream = [2]int{s, e}
		case "stream_options":
			opts = [2]int{s, e}
		}
	}) {
		return nil, fmt.Errorf("%w: not a JSON object", ErrInvalidBody)
	}
	if stream[0] < 0 || string(body[stream[0]:stream[1]]) != "true" {
		return body, nil
	}
	if opts[0] < 0 {
		return InsertField(body, "stream_options", []byte(`{"include_usage":true}`)), nil
	}
	v := body[opts[0]:opts[1]]
	if string(v) == "null" {
		return splice(body, opts[0], opts[1], []byte(`{"include_usage":true}`)), nil
	}
	if v[0] != '{' {
		return nil, fmt.Errorf("%w: stream_options is not an object", ErrInvalidBody)
	}
	s, e, found := -1, -1, false
	if !eachTopLevel(v, func(k []byte, vs, ve int) {
		if string(k) == "include_usage" {
			s, e, found = vs, ve, true
		}
	}) {
		return nil, fmt.Errorf("%w: stream_options is not an object", ErrInvalidBody)
	}
	switch {
	case found && string(v[s:e]) == "true":
		return body, nil
	case found:
		return splice(body, opts[0]+s, opts[0]+e, []byte("true")), nil
	}
	return splice(body, opts[0], opts[1], InsertField(v, "include_usage", []byte("true"))), nil
}

// Redacted is what a token becomes in any text the node logs or relays.
const Redacted = "[redacted]"

// Redact returns s with the upstream's token replaced by [Redacted] (see
// [RedactSecret]). Some providers quote the key they were given in their
// error messages; a node relays those messages to gateways and logs them,
// so every error text from the engine passes through here first.
func (u *Upstream) Redact(s string) string {
	if u == nil {
		return s
	}
	return RedactSecret(s, u.Token)
}

// RedactSecret returns s with every occurrence of secret replaced by
// [Redacted]. Error texts are cut to a length before they get here, so a
// text that ends in the secret's first characters (4 or more) has them
// redacted too.
func RedactSecret(s, secret string) string {
	if secret == "" {
		return s
	}
	s = strings.ReplaceAll(s, secret, Redacted)
	for k := len(secret) - 1; k >= 4; k-- {
		if strings.HasSuffix(s, secret[:k]) {
			return s[:len(s)-k] + Redacted
		}
	}
	return s
}

// RedactError returns e with its message and fields redacted (see Redact).
func (u *Upstream) RedactError(e *APIError) *APIError {
	if e == nil {
		return nil
	}
	c := *e
	c.Message, c.Type, c.Param, c.Code = u.Redact(c.Message), u.Redact(c.Type), u.Redact(c.Param), u.Redact(c.Code)
	return &c
}

func (u *Upstream) redactErr(err error) error {
	var se *StatusError
	if errors.As(err, &se) {
		c := *se
		c.Message = u.Redact(c.Message)
		return &c
	}
	return err
}

// readStatusError builds a *StatusError from a non-2xx response, preferring
// the OpenAI error message over the raw body.
func readStatusError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	msg := strings.TrimSpace(string(b))
	var e apiError
	var plain struct {
		Error string `json:"error"` // Ollama's native shape
	}
	if json.Unmarshal(b, &e) == nil && e.Error.Message != "" {
		msg = e.Error.Message
	} else if json.Unmarshal(b, &plain) == nil && plain.Error != "" {
		msg = plain.Error
	}
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	return &StatusError{StatusCode: resp.StatusCode, Message: msg}
}

// drainClose reads a little of what is left so the connection can be
// reused, then closes body.
func drainClose(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, 64<<10)
	_ = body.Close()
}
