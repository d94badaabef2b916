// Package jsonscan walks the top level of a JSON object without decoding
// it: the keys, and the byte spans of their values. Request bodies reach
// megabytes (images, long contexts); the gateway and node read a few keys
// of each, and edit one value in place, on every call.
package jsonscan

import (
	"bytes"
	"encoding/json"
)

// WalkTopLevel calls fn with each top-level key of the JSON object b (its
// text, unescaped when it holds escapes: "mod\u0065l" is "model" to every
// decoder), whether it was written with escapes, and the byte span
// [start,end) of its value, until fn returns false. It reports whether b
// is an object the scan could follow to its end (or to where fn stopped);
// it does not validate scalars or the inside of strings.
func WalkTopLevel(b []byte, fn func(key []byte, escaped bool, start, end int) bool) bool {
	i := SkipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i = SkipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return SkipWS(b, i+1) == len(b)
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return false
		}
		kEnd := SkipString(b, i)
		if kEnd < 0 {
			return false
		}
		key := b[i+1 : kEnd-1]
		escaped := bytes.IndexByte(key, '\\') >= 0
		if escaped {
			// "mod\u0065l" is "model" to every decoder: compare decoded.
			var k string
			if json.Unmarshal(b[i:kEnd], &k) == nil {
				key = []byte(k)
			}
		}
		i = SkipWS(b, kEnd)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		i = SkipWS(b, i+1)
		vEnd := SkipValue(b, i)
		if vEnd < 0 {
			return false
		}
		if !fn(key, escaped, i, vEnd) {
			return true
		}
		i = SkipWS(b, vEnd)
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case ',':
			i = SkipWS(b, i+1)
		case '}':
			return SkipWS(b, i+1) == len(b)
		default:
			return false
		}
	}
}

// SkipWS returns the index of the first non-whitespace byte at or after i.
func SkipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// SkipString returns the index just past the string starting at b[i]=='"',
// or -1 when it does not end.
func SkipString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// SkipValue returns the index just past the value starting at b[i], or -1
// when it does not end. Nested objects and arrays are skipped by depth,
// minding strings; scalars run to the next delimiter.
func SkipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return SkipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end := SkipString(b, j)
				if end < 0 {
					return -1
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return -1
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
		j++
	}
	if j == i {
		return -1
	}
	return j
}
