package engine

import (
	"encoding/json"
	"net/http"
)

// Usage is the token accounting an OpenAI-compatible engine reports in the
// "usage" object of a response or of the last streamed chunk.
type Usage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

// OpenAI error types and codes used by the synthetic engine.
const (
	errTypeInvalidRequest = "invalid_request_error"
	errTypeServer         = "server_error"
	errCodeModelNotFound  = "model_not_found"
	errCodeSynthetic      = "synthetic_failure"
)

// apiError is the body of an OpenAI error response.
type apiError struct {
	Error apiErrorBody `json:"error"`
}

type apiErrorBody struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// strOrNil returns nil for "" so the field encodes as JSON null.
func strOrNil(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// writeError writes an OpenAI-shaped error; param and code may be "" (null).
// Go's type names in msg are put in OpenAI's words ([PlainTypeErrors]).
func writeError(w http.ResponseWriter, status int, typ, msg, param, code string) {
	writeJSON(w, status, apiError{Error: apiErrorBody{
		Message: PlainTypeErrors(msg),
		Type:    typ,
		Param:   strOrNil(param),
		Code:    strOrNil(code),
	}})
}

// badRequest writes a 400 invalid_request_error naming param.
func badRequest(w http.ResponseWriter, msg, param string) {
	writeError(w, http.StatusBadRequest, errTypeInvalidRequest, msg, param, "")
}

// writeJSON writes v as a JSON response with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Every value passed here is a plain struct of strings and numbers.
		panic("engine: marshal response: " + err.Error())
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// Response bodies of the synthetic engine, shaped exactly like OpenAI's.

type modelList struct {
	Object string      `json:"object"`
	Data   []modelInfo `json:"data"`
}

type modelInfo struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

type chatCompletion struct {
	ID                string       `json:"id"`
	Object            string       `json:"object"`
	Created           int64        `json:"created"`
	Model             string       `json:"model"`
	SystemFingerprint string       `json:"system_fingerprint"`
	Choices           []chatChoice `json:"choices"`
	Usage             Usage        `json:"usage"`
}

type chatChoice struct {
	Index        int         `json:"index"`
	Message      chatMessage `json:"message"`
	Logprobs     *struct{}   `json:"logprobs"` // always null
	FinishReason string      `json:"finish_reason"`
}

type chatMessage struct {
	Role    string  `json:"role"`
	Content string  `json:"content"`
	Refusal *string `json:"refusal"` // always null: the synthetic engine refuses nothing (OpenAI's schema requires the field)
}

type chatChunk struct {
	ID                string            `json:"id"`
	Object            string            `json:"object"`
	Created           int64             `json:"created"`
	Model             string            `json:"model"`
	SystemFingerprint string            `json:"system_fingerprint"`
	Choices           []chatChunkChoice `json:"choices"`
	// Usage is nil (omitted) unless the client asked for usage; then it is
	// jsonNull on every chunk but the last, which carries a *Usage.
	Usage any `json:"usage,omitempty"`
}

type chatChunkChoice struct {
	Index        int       `json:"index"`
	Delta        chatDelta `json:"delta"`
	Logprobs     *struct{} `json:"logprobs"` // always null
	FinishReason *string   `json:"finish_reason"`
}

type chatDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

type textCompletion struct {
	ID                string       `json:"id"`
	Object            string       `json:"object"`
	Created           int64        `json:"created"`
	Model             string       `json:"model"`
	SystemFingerprint string       `json:"system_fingerprint"`
	Choices           []textChoice `json:"choices"`
	// Usage is a Usage on non-streamed responses; on chunks it follows the
	// same rule as chatChunk.Usage.
	Usage any `json:"usage,omitempty"`
}

type textChoice struct {
	Text         string    `json:"text"`
	Index        int       `json:"index"`
	Logprobs     *struct{} `json:"logprobs"` // always null
	FinishReason *string   `json:"finish_reason"`
}

type embeddingList struct {
	Object string          `json:"object"`
	Data   []embeddingItem `json:"data"`
	Model  string          `json:"model"`
	Usage  embeddingUsage  `json:"usage"`
}

type embeddingItem struct {
	Object string `json:"object"`
	Index  int    `json:"index"`
	// Embedding is a []float32, or a base64 string when the client asked
	// for encoding_format "base64".
	Embedding any `json:"embedding"`
}

type embeddingUsage struct {
	PromptTokens int64 `json:"prompt_tokens"`
	TotalTokens  int64 `json:"total_tokens"`
}

// jsonNull encodes as JSON null inside an `any` field that is not omitted.
var jsonNull = json.RawMessage("null")
