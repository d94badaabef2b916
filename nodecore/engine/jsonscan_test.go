package engine

import (
	"encoding/json"
	"testing"
)

// A key spelled with escapes is the same key to every decoder, so the
// scanner must see it too: "mod\u0065l" is rewritten like "model", and the
// filler sees "obj\u0065ct" as present.
func TestEscapedKeysAreTheirDecodedSelves(t *testing.T) {
	out, err := WithModel([]byte(`{"mod\u0065l":"llama3.2","messages":[]}`), "llama3.2:latest")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Model string `json:"model"`
	}
	if err := json.Unmarshal(out, &v); err != nil || v.Model != "llama3.2:latest" {
		t.Fatalf("rewritten body %s: %+v %v", out, v, err)
	}
	chunk := []byte(`{"id":"x","obj\u0065ct":"chat.completion.chunk","created":1,"model":"m","choices":[]}`)
	c, err := ParseChunk(chunk)
	if err != nil {
		t.Fatal(err)
	}
	f := FillerFor("/chat/completions", true, "r", "m", 1)
	if got := f.Fill(chunk, &c); string(got) != string(chunk) {
		t.Fatalf("filled a field that was there: %s", got)
	}
}

// FieldSpans gives up (ok false) wherever a decoder could pick another
// value than the exact key's: a key given twice, written with escapes, or
// in another case, which Go's encoding/json folds to the same field
// ("usAge", and "uſage" with a long s).
func TestFieldSpansLeavesAmbiguousKeysToADecoder(t *testing.T) {
	spans, ok := FieldSpans([]byte(`{"choices":[1], "usage" :{"a":1},"x":2}`), "usage", "choices", "id")
	if !ok || spans[0] != [2]int{25, 32} || spans[1] != [2]int{11, 14} || spans[2] != [2]int{-1, -1} {
		t.Fatalf("spans %v ok %v", spans, ok)
	}
	for _, b := range []string{
		`{"usage":{},"usage":null}`,
		`{"us\u0061ge":{}}`,
		`{"usage":{},"usAge":{"prompt_tokens":1}}`,
		`{"USAGE":{}}`,
		`{"uſage":{}}`,
		`{"usage":{}`,
	} {
		if spans, ok := FieldSpans([]byte(b), "usage"); ok {
			t.Errorf("FieldSpans(%s) = %v, want a decoder to decide", b, spans)
		}
	}
}
