package engine

import (
	"bytes"

	"github.com/tokenrouter/tokenrouter/internal/jsonscan"
)

// A minimal scanner over the top level of a JSON object, so a request body
// can have one field replaced without decoding and re-encoding the rest
// (bodies reach megabytes with images or long contexts).

// eachTopLevel calls fn with each top-level key of the JSON object b (its
// text, unescaped when it holds escapes) and the byte span [start,end) of its value. It
// reports whether b is an object the scan could follow to its end; it does
// not validate scalars or the inside of strings.
func eachTopLevel(b []byte, fn func(key []byte, start, end int)) bool {
	return walkTopLevel(b, func(key []byte, _ bool, start, end int) { fn(key, start, end) })
}

// walkTopLevel is eachTopLevel, also telling fn whether the key was
// written with escapes (jsonscan.WalkTopLevel without stopping).
func walkTopLevel(b []byte, fn func(key []byte, escaped bool, start, end int)) bool {
	return jsonscan.WalkTopLevel(b, func(key []byte, escaped bool, start, end int) bool {
		fn(key, escaped, start, end)
		return true
	})
}

var (
	skipWS     = jsonscan.SkipWS
	skipString = jsonscan.SkipString
	skipValue  = jsonscan.SkipValue
)

// topLevelValue returns the span [start,end) of the value of key in the
// JSON object b, comparing the key's raw text. A key given twice yields its
// last value, the one JSON decoders (Go's, Python's) keep. ok is false when
// b is not an object or has no such key.
func topLevelValue(b []byte, key string) (start, end int, ok bool) {
	found := false
	valid := eachTopLevel(b, func(k []byte, s, e int) {
		if string(k) == key {
			start, end, found = s, e, true
		}
	})
	return start, end, valid && found
}

// splice returns b with [start,end) replaced by with, in a new slice.
func splice(b []byte, start, end int, with []byte) []byte {
	out := make([]byte, 0, len(b)-(end-start)+len(with))
	out = append(out, b[:start]...)
	out = append(out, with...)
	return append(out, b[end:]...)
}

// InsertField returns the object obj (a JSON object's bytes, starting with
// '{' after optional whitespace) with `"key":value` added as its first
// field, in a new slice.
func InsertField(obj []byte, key string, value []byte) []byte {
	open := skipWS(obj, 0) + 1
	field := make([]byte, 0, len(key)+len(value)+4)
	field = append(field, '"')
	field = append(field, key...)
	field = append(field, '"', ':')
	field = append(field, value...)
	if i := skipWS(obj, open); i < len(obj) && obj[i] != '}' {
		field = append(field, ',')
	}
	return splice(obj, open, open, field)
}

// FieldSpans returns the spans [start,end) of the values of the named
// top-level keys of the JSON object b, {-1,-1} for a key it lacks, so a
// caller can replace a few fields without decoding the rest. ok is false
// when b is not an object the scan can follow, or when one of the keys is
// given twice, spelled with escapes or in another case ("Usage", which Go's
// encoding/json reads as "usage"): then only a decoder knows which value
// counts. It does not validate scalars or the inside of strings.
func FieldSpans(b []byte, keys ...string) (spans [][2]int, ok bool) {
	spans = make([][2]int, len(keys))
	for i := range spans {
		spans[i] = [2]int{-1, -1}
	}
	unique := true
	valid := walkTopLevel(b, func(k []byte, escaped bool, s, e int) {
		for i, key := range keys {
			if string(k) == key {
				if spans[i][0] >= 0 || escaped {
					unique = false
				}
				spans[i] = [2]int{s, e}
			} else if bytes.EqualFold(k, []byte(key)) {
				unique = false // the same key to a decoder that folds case
			}
		}
	})
	if !valid || !unique {
		return nil, false
	}
	return spans, true
}
