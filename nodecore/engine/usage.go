package engine

import (
	"bytes"
	"encoding/json"
)

var usageKey = []byte(`"usage"`)

// mayHaveUsageObject reports whether chunk contains `"usage"` followed,
// after optional whitespace, by ':' and, after optional whitespace, '{'.
func mayHaveUsageObject(chunk []byte) bool {
	for {
		i := bytes.Index(chunk, usageKey)
		if i < 0 {
			return false
		}
		chunk = chunk[i+len(usageKey):]
		rest := skipSpace(chunk)
		if len(rest) > 0 && rest[0] == ':' {
			rest = skipSpace(rest[1:])
			if len(rest) > 0 && rest[0] == '{' {
				return true
			}
		}
	}
}

// skipSpace drops leading JSON whitespace.
func skipSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\n' || b[0] == '\r') {
		b = b[1:]
	}
	return b
}

// ChunkUsage returns the top-level usage carried by a streamed chunk or a
// response body, or nil when it is absent, null or malformed. Chunks that do
// not contain `"usage":{` (whitespace allowed around the colon) are rejected
// without decoding.
func ChunkUsage(chunk []byte) *Usage {
	if !mayHaveUsageObject(chunk) {
		return nil
	}
	var v struct {
		Usage *Usage `json:"usage"`
	}
	if json.Unmarshal(chunk, &v) != nil {
		return nil
	}
	return v.Usage
}

// ChunkHasContent reports whether a streamed chat or completion chunk
// carries generated output: a non-empty choices[].delta.content or
// choices[].text, and also (so tool-calling and reasoning models count as
// producing output) a non-empty delta.tool_calls, delta.reasoning_content
// or delta.reasoning. It is [ParseChunk]'s Content, after a cheap check
// that the chunk has choices at all.
func ChunkHasContent(chunk []byte) bool {
	if !bytes.Contains(chunk, []byte(`"choices"`)) {
		return false
	}
	c, err := ParseChunk(chunk)
	return err == nil && c.Content
}

// rawNonEmpty reports whether a raw value is a non-empty string or a
// non-empty array; null, objects and other types count as empty.
func rawNonEmpty(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	switch {
	case len(raw) == 0:
		return false
	case raw[0] == '"':
		return len(raw) > 2
	case raw[0] == '[':
		var parts []json.RawMessage
		return json.Unmarshal(raw, &parts) == nil && len(parts) > 0
	}
	return false
}
