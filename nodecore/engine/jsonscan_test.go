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
