package openai

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Meta is what Token-Router reads of an OpenAI request body; the body itself
// travels to the engine untouched.
type Meta struct {
	Model          string
	Stream         bool
	IncludeUsage   bool   // stream_options.include_usage
	MaxTokens      int64  // the larger of max_completion_tokens and max_tokens; 0 when absent
	MaxTokensParam string // which of the two MaxTokens came from
	N              int64  // choices asked for; 1 when absent
}

// RequestError is a client mistake in a request body, with the parameter it concerns.
type RequestError struct {
	Param   string
	Code    string
	Message string
}

func (e *RequestError) Error() string { return e.Message }

// ErrNotObject is returned for a body that is not a JSON object.
var ErrNotObject = errors.New("the request body must be a JSON object")

// watched are the keys routing and billing depend on. They are read by exact
// name, as Python and JavaScript engines read them; a key that differs only
// in case ("Stream") is refused, because engines written in Go would take it
// for the real one and the gateway and engine would disagree.
var watched = []string{"model", "stream", "stream_options"}

// ParseMeta reads model, stream and stream_options.include_usage from body.
func ParseMeta(body []byte) (Meta, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		var typ *json.UnmarshalTypeError
		if errors.As(err, &typ) {
			return Meta{}, &RequestError{Code: "invalid_json", Message: ErrNotObject.Error()}
		}
		return Meta{}, &RequestError{Code: "invalid_json", Message: "the request body is not valid JSON: " + err.Error()}
	}
	if obj == nil {
		return Meta{}, &RequestError{Code: "invalid_json", Message: ErrNotObject.Error()}
	}
	for k := range obj {
		for _, w := range watched {
			if k != w && strings.EqualFold(k, w) {
				return Meta{}, &RequestError{Param: k, Code: "invalid_value",
					Message: fmt.Sprintf("unknown parameter %q: did you mean %q? (parameter names are case-sensitive)", k, w)}
			}
		}
	}
	var m Meta
	if raw, ok := obj["model"]; ok && string(raw) != "null" {
		if json.Unmarshal(raw, &m.Model) != nil {
			return Meta{}, &RequestError{Param: "model", Code: "invalid_type", Message: "model must be a string"}
		}
	}
	if raw, ok := obj["stream"]; ok && string(raw) != "null" {
		if json.Unmarshal(raw, &m.Stream) != nil {
			return Meta{}, &RequestError{Param: "stream", Code: "invalid_type", Message: "stream must be a boolean"}
		}
	}
	if raw, ok := obj["stream_options"]; ok && string(raw) != "null" {
		var so map[string]json.RawMessage
		if json.Unmarshal(raw, &so) != nil {
			return Meta{}, &RequestError{Param: "stream_options", Code: "invalid_type", Message: "stream_options must be an object"}
		}
		if iu, ok := so["include_usage"]; ok && string(iu) != "null" {
			if json.Unmarshal(iu, &m.IncludeUsage) != nil {
				return Meta{}, &RequestError{Param: "stream_options.include_usage", Code: "invalid_type", Message: "stream_options.include_usage must be a boolean"}
			}
		}
	}
	m.N = 1
	// Engines differ in which of the two they honour; the larger one is what
	// a call may generate, so it is what limits and reservations use.
	for _, k := range []string{"max_completion_tokens", "max_tokens"} {
		if raw, ok := obj[k]; ok && string(raw) != "null" {
			var v int64
			if json.Unmarshal(raw, &v) != nil || v < 0 {
				return Meta{}, &RequestError{Param: k, Code: "invalid_type", Message: k + " must be a non-negative integer"}
			}
			if v > m.MaxTokens {
				m.MaxTokens, m.MaxTokensParam = v, k
			}
		}
	}
	if raw, ok := obj["n"]; ok && string(raw) != "null" {
		if json.Unmarshal(raw, &m.N) != nil || m.N < 1 || m.N > 128 {
			return Meta{}, &RequestError{Param: "n", Code: "invalid_value", Message: "n must be an integer from 1 to 128"}
		}
	}
	return m, nil
}
