package engine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxErrorMessage bounds the message kept from an engine's error.
const maxErrorMessage = 1000

// APIError is an engine's error, read from whichever shape the engine uses:
//
//	{"error":{"message":..,"type":..,"param":..,"code":..}}   OpenAI, LM Studio, Ollama /v1, OpenRouter
//	{"error":{"code":400,"message":..,"type":..}}              llama.cpp (numeric code)
//	{"object":"error","message":..,"type":..,"code":400}       vLLM
//	{"error":"model \"x\" not found, try pulling it first"}    Ollama's native API
//	{"detail":..} / {"message":..}                             FastAPI-based servers (MLX)
//	any other text                                             proxies, HTML error pages
type APIError struct {
	// Status is the HTTP status the engine answered, or for an error sent
	// inside a 200 stream its numeric "code" when that is an HTTP status;
	// 0 when unknown.
	Status int
	// Message is the engine's message, cut to 1,000 bytes.
	Message string
	// Type is an OpenAI error type ("invalid_request_error",
	// "server_error", ...), mapped from the engine's own when it names a
	// Python exception (vLLM's "BadRequestError").
	Type string
	// Param and Code are OpenAI's param and code strings, "" when absent
	// (a numeric code becomes Status, not Code).
	Param, Code string
}

// Error implements error.
func (e *APIError) Error() string {
	return fmt.Sprintf("engine error %d (%s): %s", e.Status, e.Type, e.Message)
}

// JSON is the error in OpenAI's shape, {"error":{"message","type","param","code"}}.
func (e *APIError) JSON() []byte {
	b, _ := json.Marshal(apiError{Error: apiErrorBody{
		Message: e.Message, Type: e.Type, Param: strOrNil(e.Param), Code: strOrNil(e.Code),
	}})
	return b
}

// ConsumerFault reports whether the error is the consumer's doing (a bad
// request: 400, 413, 422) rather than the engine's.
func (e *APIError) ConsumerFault() bool {
	switch e.Status {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity:
		return true
	}
	return false
}

// wireError holds every field any engine's error shape uses.
type wireError struct {
	Error   json.RawMessage `json:"error"`
	Object  string          `json:"object"`
	Message json.RawMessage `json:"message"`
	Detail  json.RawMessage `json:"detail"`
	Type    json.RawMessage `json:"type"`
	Param   json.RawMessage `json:"param"`
	Code    json.RawMessage `json:"code"`
}

// ParseError reads an engine's error body (see [APIError] for the shapes)
// answered with status (0 for an error inside a 200 stream). It never fails:
// a body it cannot read becomes the message.
func ParseError(status int, body []byte) *APIError {
	e := &APIError{Status: status}
	var w wireError
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) > 0 && trimmed[0] == '{' && json.Unmarshal(trimmed, &w) == nil {
		inner := bytes.TrimSpace(w.Error)
		switch {
		case len(inner) > 0 && inner[0] == '{':
			var in wireError
			if json.Unmarshal(inner, &in) == nil {
				e.fill(&in)
			}
		case len(inner) > 0 && inner[0] == '"':
			e.Message = rawString(inner)
		default:
			e.fill(&w)
		}
		if e.Message == "" {
			e.Message = rawString(w.Detail)
			if e.Message == "" && len(bytes.TrimSpace(w.Detail)) > 0 && string(bytes.TrimSpace(w.Detail)) != "null" {
				e.Message = string(bytes.TrimSpace(w.Detail)) // FastAPI validation errors: a list
			}
		}
	} else {
		e.Message = string(trimmed)
	}
	if e.Message == "" {
		e.Message = http.StatusText(e.Status)
	}
	if e.Message == "" {
		e.Message = "the engine reported an error"
	}
	e.Message = cut(PlainTypeErrors(e.Message), maxErrorMessage)
	e.Type = openAIType(e.Type, e.Status)
	return e
}

// fill copies message, type, param and code from one error object.
func (e *APIError) fill(w *wireError) {
	e.Message = rawString(w.Message)
	e.Type = rawString(w.Type)
	e.Param = rawString(w.Param)
	code := bytes.TrimSpace(w.Code)
	if len(code) > 0 && code[0] == '"' {
		e.Code = rawString(code)
	} else if n, err := strconv.Atoi(string(code)); err == nil && n >= 400 && n <= 599 && e.Status == 0 {
		e.Status = n
	}
}

// openAIType maps an engine's error type to OpenAI's, defaulting by status.
func openAIType(typ string, status int) string {
	switch typ {
	case "BadRequestError", "ValidationError", "NotFoundError", "invalid_request", "not_found_error":
		return "invalid_request_error"
	case "InternalServerError", "api_error", "":
		if typ == "" && status > 0 && status < 500 {
			return "invalid_request_error"
		}
		return "server_error"
	}
	return typ
}

// rawString decodes a JSON string value; anything else is "".
func rawString(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '"' {
		return ""
	}
	var s string
	_ = json.Unmarshal(raw, &s)
	return strings.TrimSpace(s)
}

// cut shortens s to at most n bytes on a rune boundary.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
