// Package openai holds the small pieces of OpenAI's HTTP conventions every
// Token-Router HTTP API shares: the error shape and bearer keys.
package openai

import (
	"encoding/json"
	"net/http"
	"strings"
)

// ErrorDetail is the inside of OpenAI's error shape.
type ErrorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// ErrorBody is OpenAI's error shape: {"error":{"message","type","param","code"}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// NewError builds an error body; empty param or code become null.
func NewError(typ, param, code, msg string) ErrorBody {
	e := ErrorBody{Error: ErrorDetail{Message: msg, Type: typ}}
	if param != "" {
		e.Error.Param = &param
	}
	if code != "" {
		e.Error.Code = &code
	}
	return e
}

// ErrorJSON is NewError marshalled.
func ErrorJSON(typ, param, code, msg string) []byte {
	b, _ := json.Marshal(NewError(typ, param, code, msg))
	return b
}

// WriteError writes an OpenAI-shaped error with status.
func WriteError(w http.ResponseWriter, status int, typ, param, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(ErrorJSON(typ, param, code, msg), '\n'))
}

// BearerKey returns the key from "Authorization: Bearer <key>".
func BearerKey(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	const prefix = "bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", false
	}
	key := strings.TrimSpace(h[len(prefix):])
	return key, key != ""
}
