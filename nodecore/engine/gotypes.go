package engine

import (
	"regexp"
	"strings"
)

// goTypeError matches encoding/json's type errors: "json: cannot unmarshal
// string into Go struct field chatRequest.messages.content of type
// []engine.part" or "... into Go value of type int".
var goTypeError = regexp.MustCompile(`json: cannot unmarshal (\w+(?: \S+)?) into Go (?:struct field (\S+)|value) of type (\S+)`)

// PlainTypeErrors rewrites encoding/json's type errors in msg in OpenAI's
// words ("Invalid type for 'messages.content': expected an array, but got
// a string instead."), so no consumer reads a Go type name: engines written
// in Go (Ollama, the synthetic engine) answer a wrong type with them.
func PlainTypeErrors(msg string) string {
	if !strings.Contains(msg, "json: cannot unmarshal ") {
		return msg
	}
	return goTypeError.ReplaceAllStringFunc(msg, func(m string) string {
		sub := goTypeError.FindStringSubmatch(m)
		got, field, typ := sub[1], sub[2], sub[3]
		if _, path, ok := strings.Cut(field, "."); ok {
			field = path // the Go struct's name goes, the JSON path stays
		}
		if field == "" {
			return "Invalid type in the request: expected " + JSONTypeOf(typ) + ", but got " + article(got) + " instead."
		}
		return "Invalid type for '" + field + "': expected " + JSONTypeOf(typ) + ", but got " + article(got) + " instead."
	})
}

// JSONTypeOf names, in OpenAI's words, the JSON type a Go type (as
// reflect.Type.String gives it) decodes from: "an array", "an integer"...
func JSONTypeOf(goType string) string {
	t := strings.TrimLeft(goType, "*")
	switch {
	case strings.HasPrefix(t, "[]"):
		return "an array"
	case t == "string":
		return "a string"
	case t == "bool":
		return "a boolean"
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
		return "an integer"
	case strings.HasPrefix(t, "float"):
		return "a decimal"
	}
	return "an object"
}

// article puts a or an before encoding/json's name of a JSON value's type
// ("string", "number", "number 5.5", "object", "array", "bool").
func article(v string) string {
	if strings.HasPrefix(v, "number ") {
		return "a " + v
	}
	switch v {
	case "number":
		return "a number"
	case "bool":
		return "a boolean"
	case "object", "array":
		return "an " + v
	}
	return "a " + v
}
