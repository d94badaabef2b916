package engine

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// OpenAI's "object" values for the answers a node relays.
const (
	ObjectChatChunk      = "chat.completion.chunk"
	ObjectChatCompletion = "chat.completion"
	ObjectTextCompletion = "text_completion" // streamed or not
	ObjectList           = "list"            // embeddings
)

// Filler completes answers that lack top-level fields OpenAI's SDKs expect:
// llama.cpp omits "created" and "object" on some chunks, some MLX and
// home-grown servers send no "id" or "created" at all. Only a missing field
// is added; a payload that has them all is returned as it is, never
// re-encoded, and every other field (llama.cpp's "timings", say) passes
// through. A zero value field of Filler is never filled in.
type Filler struct {
	ID      string // e.g. "chatcmpl-<request id>", the same for every chunk of a stream
	Object  string // one of the Object constants
	Created int64  // unix seconds, the same for every chunk of a stream
	Model   string // the model the consumer asked for
}

// FillerFor returns the Filler for an answer on path ("/chat/completions",
// "/completions", "/embeddings"), streamed or not, for the call requestID
// of model started at created (unix seconds).
func FillerFor(path string, stream bool, requestID, model string, created int64) Filler {
	switch path {
	case "/chat/completions":
		obj := ObjectChatCompletion
		if stream {
			obj = ObjectChatChunk
		}
		return Filler{ID: "chatcmpl-" + requestID, Object: obj, Created: created, Model: model}
	case "/completions":
		return Filler{ID: "cmpl-" + requestID, Object: ObjectTextCompletion, Created: created, Model: model}
	}
	// Embeddings carry neither id nor created in OpenAI's schema.
	return Filler{Object: ObjectList, Model: model}
}

// Fill returns b with the fields c (b's [ParseChunk] result) reports
// missing added at the start of the object. b itself is returned when
// nothing is missing.
func (f *Filler) Fill(b []byte, c *Chunk) []byte {
	m := c.missing
	// ParseChunk matches keys as Go does, ignoring case; consumers' SDKs
	// (Python, JavaScript) do not, so "oBjeCt" is no "object" to them. The
	// exact top-level keys decide.
	present := field(0)
	if c.exact {
		// ReadChunk read the exact keys already.
	} else if eachTopLevel(b, func(key []byte, _, _ int) {
		switch string(key) {
		case "id":
			present |= fieldID
		case "object":
			present |= fieldObject
		case "created":
			present |= fieldCreated
		case "model":
			present |= fieldModel
		}
	}) {
		m = (fieldID | fieldObject | fieldCreated | fieldModel) &^ present
	}
	if f.ID == "" {
		m &^= fieldID
	}
	if f.Object == "" {
		m &^= fieldObject
	}
	if f.Created == 0 {
		m &^= fieldCreated
	}
	if f.Model == "" {
		m &^= fieldModel
	}
	if m == 0 {
		return b
	}
	open := bytes.IndexByte(b, '{')
	if open < 0 {
		return b
	}
	out := make([]byte, 0, len(b)+96)
	out = append(out, b[:open+1]...)
	n := 0
	add := func(key string, val []byte) {
		if n > 0 {
			out = append(out, ',')
		}
		out = append(out, '"')
		out = append(out, key...)
		out = append(out, `":`...)
		out = append(out, val...)
		n++
	}
	if m&fieldID != 0 {
		add("id", quote(f.ID))
	}
	if m&fieldObject != 0 {
		add("object", quote(f.Object))
	}
	if m&fieldCreated != 0 {
		add("created", strconv.AppendInt(nil, f.Created, 10))
	}
	if m&fieldModel != 0 {
		add("model", quote(f.Model))
	}
	rest := b[open+1:]
	if i := skipWS(rest, 0); i < len(rest) && rest[i] != '}' {
		out = append(out, ',')
	}
	return append(out, rest...)
}

// quote encodes s as a JSON string.
func quote(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}
