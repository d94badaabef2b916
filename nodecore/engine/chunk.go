package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"unicode/utf8"
)

// ErrNotJSONObject is returned by [ParseChunk] for a payload that is not a
// JSON object.
var ErrNotJSONObject = errors.New("engine: payload is not a JSON object")

// Chunk is what a node reads of one streamed chunk or one non-streamed
// response body, in a single decode. Every field is tolerant of the shapes
// engines actually send: values of unexpected types count as absent.
type Chunk struct {
	// Usage is the top-level usage object; nil when absent, null or malformed.
	Usage *Usage
	// Err is the engine's failure when the payload is an error rather than
	// an answer: a top-level "object":"error" (vLLM) or a non-null top-level
	// "error" (OpenAI, llama.cpp, OpenRouter, Ollama). Nil otherwise.
	Err *APIError
	// Content reports generated output: a non-empty text, content,
	// tool_calls, reasoning_content or reasoning in any choice.
	Content bool
	// Chars counts the characters (runes) of generated output: text,
	// content (or its text parts), reasoning, tool-call names and arguments.
	Chars int64
	// Choices holds each choice's index and whether it carries a
	// finish_reason, in the order they appear.
	Choices []ChoiceEnd
	// missing has a bit set per top-level field OpenAI's schema requires
	// that the payload lacks (see [Filler]).
	missing field
	// exact says missing was read from the exact top-level keys, as the
	// Filler wants them ([ReadChunk]'s one-pass reading, which leaves any
	// key encoding/json might fold to ParseChunk).
	exact bool
}

// ChoiceEnd is one choice of a chunk: its index and whether it finished.
type ChoiceEnd struct {
	Index    int
	Finished bool // a non-empty finish_reason
}

// field is a bit set of top-level response fields.
type field uint8

const (
	fieldID field = 1 << iota
	fieldObject
	fieldCreated
	fieldModel
)

// wireBody is the part of a response or chunk a node reads. Its fields
// are small Unmarshalers that look at each value where the decoder found
// it, so a conforming chunk is read without copying any of its values, and
// an engine's odd type for one field cannot hide the others.
type wireBody struct {
	ID      present      `json:"id"`
	Object  objectField  `json:"object"`
	Created present      `json:"created"`
	Model   present      `json:"model"`
	Usage   usageField   `json:"usage"`
	Error   errorField   `json:"error"`
	Choices []wireChoice `json:"choices"`
}

type wireChoice struct {
	Index        indexField  `json:"index"`
	Text         outputField `json:"text"`
	FinishReason finishField `json:"finish_reason"`
	Delta        wireMessage `json:"delta"`
	Message      wireMessage `json:"message"`
}

type wireMessage struct {
	Content          outputField `json:"content"`
	ReasoningContent outputField `json:"reasoning_content"`
	Reasoning        outputField `json:"reasoning"`
	ToolCalls        toolCalls   `json:"tool_calls"`
}

// present records that a field is there, whatever its value (a null
// "id" is not filled in: a second "id" key would be ambiguous).
type present bool

func (p *present) UnmarshalJSON([]byte) error {
	*p = true
	return nil
}

// finishField records a finish_reason that is a non-empty string.
type finishField bool

func (f *finishField) UnmarshalJSON(b []byte) error {
	*f = len(b) > 2 && b[0] == '"'
	return nil
}

// objectField records that "object" is there, and whether it says "error".
type objectField struct{ set, isError bool }

func (o *objectField) UnmarshalJSON(b []byte) error {
	o.set = true
	o.isError = string(b) == `"error"`
	return nil
}

// errorField records a top-level "error" that says something: not null,
// false or "".
type errorField bool

func (e *errorField) UnmarshalJSON(b []byte) error {
	*e = string(b) != "null" && string(b) != `""` && string(b) != "false"
	return nil
}

// usageField decodes a usage object; anything else leaves it nil.
type usageField struct{ u *Usage }

func (f *usageField) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '{' {
		var u Usage
		if json.Unmarshal(b, &u) == nil {
			f.u = &u
		}
	}
	return nil
}

// indexField is a choice's index; set is false when absent or not an integer.
type indexField struct {
	n   int
	set bool
}

func (f *indexField) UnmarshalJSON(b []byte) error {
	n, err := strconv.Atoi(string(b))
	f.n, f.set = n, err == nil
	return nil
}

// outputField is generated output (text, content, reasoning): whether it
// is non-empty (a non-empty string or array) and its characters.
type outputField struct {
	nonEmpty bool
	chars    int64
}

func (f *outputField) UnmarshalJSON(b []byte) error {
	f.nonEmpty = rawNonEmpty(b)
	if f.nonEmpty {
		f.chars = contentChars(b)
	}
	return nil
}

// toolCalls is a tool_calls array: whether it is non-empty, and the
// characters of its function names and arguments.
type toolCalls outputField

func (f *toolCalls) UnmarshalJSON(b []byte) error {
	f.nonEmpty = rawNonEmpty(b)
	if f.nonEmpty {
		f.chars = toolCallChars(b)
	}
	return nil
}

// ParseChunk reads a streamed chunk or a response body. It fails only for
// a payload that is not a well-formed JSON object.
func ParseChunk(b []byte) (Chunk, error) {
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return Chunk{}, ErrNotJSONObject
	}
	var w wireBody
	if err := json.Unmarshal(b, &w); err != nil {
		// A field of an unexpected type (choices as an object, say) leaves
		// the rest decoded; only broken JSON is refused.
		var te *json.UnmarshalTypeError
		if !errors.As(err, &te) {
			return Chunk{}, ErrNotJSONObject
		}
	}
	c := Chunk{Usage: w.Usage.u}
	if !w.ID {
		c.missing |= fieldID
	}
	if !w.Object.set {
		c.missing |= fieldObject
	}
	if !w.Created {
		c.missing |= fieldCreated
	}
	if !w.Model {
		c.missing |= fieldModel
	}
	if w.Object.isError || bool(w.Error) {
		c.Err = ParseError(0, b)
	}
	if len(w.Choices) > 0 {
		c.Choices = make([]ChoiceEnd, len(w.Choices))
	}
	for i := range w.Choices {
		ch := &w.Choices[i]
		idx := i
		if ch.Index.set {
			idx = ch.Index.n
		}
		c.Choices[i] = ChoiceEnd{Index: idx, Finished: bool(ch.FinishReason)}
		for _, o := range [...]outputField{ch.Text, ch.Delta.Content, ch.Delta.ReasoningContent, ch.Delta.Reasoning,
			outputField(ch.Delta.ToolCalls), ch.Message.Content, ch.Message.ReasoningContent, ch.Message.Reasoning,
			outputField(ch.Message.ToolCalls)} {
			if o.nonEmpty {
				c.Content = true
				c.Chars += o.chars
			}
		}
	}
	return c, nil
}

// stringChars returns the characters of a JSON string value (0 for any
// other type).
func stringChars(raw json.RawMessage) int64 {
	raw = bytes.TrimSpace(raw)
	if len(raw) < 2 || raw[0] != '"' {
		return 0
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		return int64(utf8.RuneCount(raw[1 : len(raw)-1]))
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return 0
	}
	return int64(utf8.RuneCountInString(s))
}

// contentChars returns the characters of a message content: a string, or
// the text of each part of an array.
func contentChars(raw json.RawMessage) int64 {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '[' {
		return stringChars(raw)
	}
	var parts []struct {
		Text json.RawMessage `json:"text"`
	}
	if json.Unmarshal(raw, &parts) != nil {
		return 0
	}
	var n int64
	for _, p := range parts {
		n += stringChars(p.Text)
	}
	return n
}

// toolCallChars returns the characters of the function names and arguments
// of a tool_calls array. Arguments an engine sends as an object (not the
// string OpenAI specifies) count by their JSON length.
func toolCallChars(raw json.RawMessage) int64 {
	var calls []struct {
		Function struct {
			Name      json.RawMessage `json:"name"`
			Arguments json.RawMessage `json:"arguments"`
		} `json:"function"`
	}
	if json.Unmarshal(raw, &calls) != nil {
		return 0
	}
	var n int64
	for _, c := range calls {
		n += stringChars(c.Function.Name)
		if a := bytes.TrimSpace(c.Function.Arguments); len(a) > 0 && a[0] == '"' {
			n += stringChars(a)
		} else if len(a) > 0 && string(a) != "null" {
			n += int64(utf8.RuneCount(a))
		}
	}
	return n
}
