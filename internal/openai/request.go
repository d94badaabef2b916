package openai

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"unicode"
	"unicode/utf8"

	"github.com/tokenrouter/tokenrouter/internal/jsonscan"
)

// Meta is what Token-Router reads of an OpenAI request body; the body itself
// travels to the engine untouched.
type Meta struct {
	Model          string
	Stream         bool
	IncludeUsage   bool   // stream_options.include_usage
	MaxTokens      int64  // the largest output limit the body sets (see lengthKeys); 0 when absent
	MaxTokensParam string // which key MaxTokens came from
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

// kind is the set of JSON types a parameter may take (null is always allowed:
// OpenAI takes null for "not set").
type kind uint8

const (
	kString kind = 1 << iota
	kNumber
	kInteger
	kBool
	kObject
	kArray
)

// params are the parameters the gateway knows, with their types. A wrong
// type is a 400 here, as OpenAI gives, rather than whatever the engine says
// (Go engines answer with Go type names). Keys not listed pass through
// untouched, unchecked: they are the engine's business.
var params = map[string]kind{
	// Routing and billing.
	"model": kString, "stream": kBool, "stream_options": kObject,
	"max_tokens": kInteger, "max_completion_tokens": kInteger, "n": kInteger,
	// Output limits some engines read instead of max_tokens: llama.cpp's
	// server prefers n_predict to max_tokens, TGI reads max_new_tokens,
	// Ollama num_predict. Each counts towards the call's cap.
	"n_predict": kInteger, "max_new_tokens": kInteger, "num_predict": kInteger,
	"best_of": kInteger,
	// The rest of OpenAI's chat, completions and embeddings parameters.
	"messages": kArray, "prompt": kString | kArray, "input": kString | kArray, "suffix": kString,
	"temperature": kNumber, "top_p": kNumber, "frequency_penalty": kNumber, "presence_penalty": kNumber,
	"seed": kInteger, "stop": kString | kArray, "logprobs": kBool | kInteger, "top_logprobs": kInteger,
	"logit_bias": kObject, "user": kString, "tools": kArray, "tool_choice": kString | kObject,
	"parallel_tool_calls": kBool, "response_format": kObject, "functions": kArray,
	"function_call": kString | kObject, "echo": kBool, "encoding_format": kString, "dimensions": kInteger,
	"metadata": kObject, "store": kBool, "reasoning_effort": kString, "service_tier": kString,
	"modalities": kArray, "prediction": kObject, "audio": kObject, "web_search_options": kObject,
}

// lengthKeys are the keys that limit a call's output, in the order a tie
// names its param. The cap is the largest: engines differ in which they
// honour (llama.cpp takes n_predict over max_tokens; OpenAI's newer models
// max_completion_tokens), and what an engine may generate is what the
// gateway must reserve and bill up to.
var lengthKeys = []string{"max_completion_tokens", "max_tokens", "n_predict", "max_new_tokens", "num_predict"}

// folded maps a parameter's folded name to its name: a key that folds to a
// known parameter without being it ("MAX_TOKENS", "Stream", "uſer") is
// refused, because engines written in Go (encoding/json folds case) would
// take it for the parameter while Python and C++ engines would not.
var folded = func() map[string]string {
	m := make(map[string]string, len(params))
	for k := range params {
		m[foldName(k)] = k
	}
	return m
}()

// foldName folds s as encoding/json matches keys to fields: ASCII letters
// to upper case, every other rune to the smallest of its Unicode fold orbit
// (so "ſ" is "S" and the Kelvin sign "K").
func foldName(s string) string {
	var b []byte
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			}
			b = append(b, c)
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		for {
			r2 := unicode.SimpleFold(r)
			if r2 <= r {
				r = r2
				break
			}
			r = r2
		}
		b = utf8.AppendRune(b, r)
		i += n
	}
	return string(b)
}

// ParseMeta reads one request body the way every engine will: it refuses a
// body where a key appears twice, or where a key differs from a known
// parameter only in case (either would let the gateway and an engine read
// different values), a known parameter of the wrong type, and n or best_of
// above 1 (nodes return one choice). It returns model, stream,
// stream_options.include_usage and the output cap.
//
// The body is validated once (json.Valid) and then walked at the top level
// without decoding it: values are decoded only for the parameters read.
// ParseMeta runs on every call, on the gateway and again on the node.
func ParseMeta(body []byte) (Meta, error) {
	if !json.Valid(body) {
		return Meta{}, invalidJSON(json.Unmarshal(body, new(json.RawMessage)))
	}
	var m Meta
	var keys [16][]byte // the keys seen, for duplicates: bodies have a handful
	seen := keys[:0]
	var err error
	ok := walkObject(body, func(key []byte, raw []byte) bool {
		for _, k := range seen {
			if bytes.Equal(k, key) {
				err = &RequestError{Param: string(key), Code: "duplicate_parameter",
					Message: fmt.Sprintf("parameter %q appears more than once; give each parameter once", key)}
				return false
			}
		}
		seen = append(seen, key)
		k, known := params[string(key)]
		if !known {
			if name, ok := folded[foldName(string(key))]; ok {
				err = &RequestError{Param: string(key), Code: "unknown_parameter",
					Message: fmt.Sprintf("unknown parameter %q: did you mean %q? (parameter names are case-sensitive)", key, name)}
				return false
			}
			return true
		}
		if err = checkType(string(key), raw, k); err == nil {
			err = m.read(string(key), raw)
		}
		return err == nil
	})
	if err != nil {
		return Meta{}, err
	}
	if !ok {
		return Meta{}, &RequestError{Code: "invalid_json", Message: ErrNotObject.Error()}
	}
	return m, nil
}

// walkObject calls fn with each key (unescaped) and raw value of the JSON
// object b, which json.Valid accepted, until fn returns false. It reports
// false when b is not an object.
func walkObject(b []byte, fn func(key, raw []byte) bool) bool {
	return jsonscan.WalkTopLevel(b, func(key []byte, _ bool, start, end int) bool {
		return fn(key, b[start:end])
	})
}

// read takes the value of one known, well-typed parameter into m.
func (m *Meta) read(key string, raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	switch key {
	case "model":
		return json.Unmarshal(raw, &m.Model)
	case "stream":
		return json.Unmarshal(raw, &m.Stream)
	case "stream_options":
		iu, err := includeUsage(raw)
		m.IncludeUsage = iu
		return err
	case "n", "best_of":
		v, err := integer(key, raw)
		if err != nil {
			return err
		}
		if v != 1 {
			return &RequestError{Param: key, Code: "invalid_value",
				Message: fmt.Sprintf("%s must be 1: nodes on this network return one choice per call (make %d calls for %d choices)", key, max(v, 1), max(v, 1))}
		}
		return nil
	}
	for _, lk := range lengthKeys {
		if key != lk {
			continue
		}
		v, err := integer(key, raw)
		if err != nil {
			return err
		}
		if v < 0 {
			return &RequestError{Param: key, Code: "invalid_value", Message: key + " must be a non-negative integer"}
		}
		if v > m.MaxTokens {
			m.MaxTokens, m.MaxTokensParam = v, key
		}
	}
	return nil
}

// includeUsage reads stream_options.include_usage, with the top level's
// rules for duplicates and case variants.
func includeUsage(raw json.RawMessage) (bool, error) {
	const name = "include_usage"
	iu, found := false, false
	var err error
	walkObject(raw, func(key, v []byte) bool {
		switch {
		case string(key) == name && found:
			err = &RequestError{Param: "stream_options." + name, Code: "duplicate_parameter",
				Message: "stream_options.include_usage appears more than once"}
		case string(key) == name:
			found = true
			if isNull(v) {
				return true
			}
			if err = checkType("stream_options."+name, v, kBool); err == nil {
				iu = string(v) == "true"
			}
		case foldName(string(key)) == foldName(name):
			err = &RequestError{Param: "stream_options." + string(key), Code: "unknown_parameter",
				Message: fmt.Sprintf("unknown parameter stream_options.%s: did you mean stream_options.include_usage? (parameter names are case-sensitive)", key)}
		}
		return err == nil
	})
	return iu, err
}

// integer reads a JSON integer literal (no fraction, no exponent: Go
// engines refuse 5.0 and Python ones read 1e3 as a float).
func integer(key string, raw json.RawMessage) (int64, error) {
	v, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		return 0, &RequestError{Param: key, Code: "invalid_value", Message: key + " is out of range"}
	}
	return v, nil
}

// checkType reports a value of a type the parameter does not take, in
// OpenAI's words ("Invalid type for 'temperature': expected a decimal, but
// got a string instead.").
func checkType(key string, raw json.RawMessage, want kind) error {
	got := jsonKind(raw)
	if got == 0 || got&want != 0 || got == kInteger && want&kNumber != 0 {
		return nil
	}
	return &RequestError{Param: key, Code: "invalid_type",
		Message: fmt.Sprintf("Invalid type for '%s': expected %s, but got %s instead.", key, kindNames(want), kindName(got))}
}

// jsonKind is the type of a valid JSON value; 0 for null.
func jsonKind(raw json.RawMessage) kind {
	switch raw[0] {
	case '"':
		return kString
	case '{':
		return kObject
	case '[':
		return kArray
	case 't', 'f':
		return kBool
	case 'n':
		return 0
	}
	if bytes.ContainsAny(raw, ".eE") {
		return kNumber
	}
	return kInteger
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

func kindName(k kind) string {
	switch k {
	case kString:
		return "a string"
	case kNumber:
		return "a decimal"
	case kInteger:
		return "an integer"
	case kBool:
		return "a boolean"
	case kObject:
		return "an object"
	case kArray:
		return "an array"
	}
	return "a value"
}

func kindNames(k kind) string {
	var names []string
	for b := kString; b <= kArray; b <<= 1 {
		if k&b != 0 {
			names = append(names, kindName(b))
		}
	}
	switch len(names) {
	case 1:
		return names[0]
	case 2:
		return "one of " + names[0] + " or " + names[1]
	}
	return "one of " + fmt.Sprint(names)
}

// invalidJSON is the error for a body a JSON decoder cannot read. Its
// message holds the decoder's words about the syntax, never a Go type.
func invalidJSON(err error) error {
	var syn *json.SyntaxError
	msg := "the request body is not valid JSON"
	switch {
	case errors.As(err, &syn):
		msg += fmt.Sprintf(": %s (at byte %d)", syn.Error(), syn.Offset)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		msg += ": it ends too early"
	}
	return &RequestError{Code: "invalid_json", Message: msg}
}
