package engine

import (
	"reflect"
	"testing"
)

var chunkCases = []struct {
	name, in string
	content  bool
	chars    int64
}{
	{"chat content", `{"choices":[{"index":0,"delta":{"content":"lorem "}}]}`, true, 6},
	{"chat role chunk", `{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`, false, 0},
	{"chat null content", `{"choices":[{"delta":{"content":null}}]}`, false, 0},
	{"finish chunk", `{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}`, false, 0},
	{"usage chunk", `{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`, false, 0},
	{"usage null chunk", `{"choices":[{"delta":{"content":"x"}}],"usage":null}`, true, 1},
	{"text", `{"object":"text_completion","choices":[{"text":"lorem ","index":0}]}`, true, 6},
	{"empty text", `{"object":"text_completion","choices":[{"text":"","finish_reason":"length"}]}`, false, 0},
	{"second choice", `{"choices":[{"delta":{}},{"delta":{"content":"xy"}}]}`, true, 2},
	{"two outputs", `{"choices":[{"delta":{"content":"ab","reasoning":"c"}}]}`, true, 3},
	{"message", `{"choices":[{"message":{"content":"x"}}]}`, true, 1},
	{"escapes", `{"choices":[{"delta":{"content":"a\nb\u00e9\ud83d\ude00\ud800x"}}]}`, true, 7},
	{"multibyte", `{"choices":[{"delta":{"content":"héllo 😀"}}]}`, true, 7},
	{"tool call", `{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{"}}]}}]}`, true, 2},
	{"empty tool calls", `{"choices":[{"delta":{"tool_calls":[ ]}}]}`, false, 0},
	{"reasoning", `{"choices":[{"delta":{"reasoning_content":"hmm"}}]}`, true, 3},
	{"content parts", `{"choices":[{"delta":{"content":[{"type":"text","text":"xy"}]}}]}`, true, 2},
	{"odd types elsewhere", `{"choices":[{"delta":{"content":"x","reasoning":{"a":1}}}]}`, true, 1},
	{"no choices", `{"id":"x"}`, false, 0},
	{"done", `[DONE]`, false, 0},
	{"malformed", `{"choices":[{"delta":{"content":"x"`, false, 0},
	{"trailing garbage", `{"choices":[{"delta":{"content":"x"}}]} x`, false, 0},
	{"trailing comma", `{"choices":[{"delta":{"content":"x"}},]}`, false, 0},
	{"type error after content", `{"choices":[{"delta":{"content":"x"}},5]}`, true, 1},
	{"choices object", `{"choices":{"delta":{"content":"x"}}}`, false, 0},
	{"delta string", `{"choices":[{"delta":"x"}]}`, false, 0},
	{"null choice", `{"choices":[null,{"text":"x"}]}`, true, 1},
	{"upper-case key", `{"Choices":[{"Delta":{"Content":"x"}}]}`, true, 1},
	{"escaped key", `{"choices":[{"delt\u0061":{"content":"x"}}]}`, true, 1},
	{"repeated delta", `{"choices":[{"delta":{"content":"x"},"delta":{"role":"assistant"}}]}`, true, 1},
	{"repeated content", `{"choices":[{"delta":{"content":"x","content":""}}]}`, false, 0},
	{"numbers", `{"n":-0.5e+10,"choices":[{"index":0,"delta":{"content":"x"}}]}`, true, 1},
	{"bad number", `{"n":01,"choices":[{"delta":{"content":"x"}}]}`, false, 0},
	{"control character", "{\"choices\":[{\"delta\":{\"content\":\"a\x01\"}}]}", false, 0},
	{"index and finish", `{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":3,"delta":{"content":"ab"},"finish_reason":null},{"index":1,"delta":{},"finish_reason":"stop"}]}`, true, 2},
	{"index odd", `{"choices":[{"index":"1","delta":{"content":"a"}},{"index":1.5,"finish_reason":""},{"index":null,"finish_reason":"x"}]}`, true, 1},
	{"near-miss index", `{"choices":[{"Index":2,"delta":{"content":"a"}}]}`, true, 1},
	{"repeated finish", `{"choices":[{"finish_reason":"stop","finish_reason":null}]}`, false, 0},
	{"missing fields", `{"ID":"x","choices":[]}`, false, 0},
	{"error null", `{"error":null,"choices":[{"text":"a"}]}`, true, 1},
	{"error", `{"error":{"message":"boom"}}`, false, 0},
	{"object error", `{"object":"error","message":"boom"}`, false, 0},
	{"usage number", `{"usage":5,"choices":[{"text":"a"}]}`, true, 1},
	{"usage details", `{"usage":{"prompt_tokens":7,"prompt_tokens_details":{"cached_tokens":2},"completion_tokens":-0,"total_tokens":null,"cost":0.5}}`, false, 0},
	{"usage float", `{"usage":{"prompt_tokens":1.5,"completion_tokens":1}}`, false, 0},
	{"usage exponent", `{"usage":{"prompt_tokens":1e3}}`, false, 0},
	{"usage too large", `{"usage":{"completion_tokens":9223372036854775808}}`, false, 0},
	{"usage string count", `{"usage":{"total_tokens":"3"}}`, false, 0},
	{"usage near-miss key", `{"usage":{"Prompt_Tokens":3}}`, false, 0},
	{"usage repeated count", `{"usage":{"prompt_tokens":3,"prompt_tokens":4}}`, false, 0},
	{"usage empty", `{"usage":{}}`, false, 0},
	{"usage array", `{"usage":[1]}`, false, 0},
	{"usage twice", `{"usage":{"prompt_tokens":3},"usage":null}`, false, 0},
	{"real chunk", `{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1795784086,"model":"synthetic-1","system_fingerprint":"synthetic","choices":[{"index":0,"delta":{"content":"pariatur "},"logprobs":null,"finish_reason":null}],"usage":null}`, true, 9},
}

// wholeAnswer is a non-streamed answer as the synthetic engine gives it.
const wholeAnswer = `{"id":"chatcmpl-1","object":"chat.completion","created":1795784086,"model":"synthetic-1","system_fingerprint":"synthetic",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"lorem ipsum dolor sit"},"logprobs":null,"finish_reason":"length"}],` +
	`"usage":{"prompt_tokens":12,"completion_tokens":16,"total_tokens":28}}`

// sameChunk reports how a and b differ in what a node or a gateway reads.
func sameChunk(a, b Chunk) bool {
	return reflect.DeepEqual(a.Usage, b.Usage) && (a.Err == nil) == (b.Err == nil) &&
		(a.Err == nil || reflect.DeepEqual(a.Err, b.Err)) &&
		a.Content == b.Content && a.Chars == b.Chars && reflect.DeepEqual(a.Choices, b.Choices) &&
		a.missing == b.missing
}

// exactMissing is what the Filler makes of a chunk's absent fields.
func exactMissing(b []byte, c *Chunk) []byte {
	f := Filler{ID: "i", Object: "o", Created: 1, Model: "m"}
	return f.Fill(b, c)
}

func checkReadChunk(t *testing.T, in []byte) {
	t.Helper()
	got, gerr := ReadChunk(in)
	want, werr := ParseChunk(in)
	if (gerr == nil) != (werr == nil) || !sameChunk(got, want) {
		t.Fatalf("ReadChunk(%q) = %+v, %v; ParseChunk = %+v, %v", in, got, gerr, want, werr)
	}
	if gerr == nil {
		if g, w := exactMissing(in, &got), exactMissing(in, &want); string(g) != string(w) {
			t.Fatalf("Fill(%q) after ReadChunk = %s; after ParseChunk = %s", in, g, w)
		}
	}
	gc, gn := ChunkOutput(in)
	wc, wn := false, int64(0)
	if werr == nil && want.Content {
		wc, wn = true, want.Chars
	}
	if gc != wc || gn != wn {
		t.Fatalf("ChunkOutput(%q) = %v, %d; ParseChunk says %v, %d", in, gc, gn, wc, wn)
	}
}

func TestReadChunk(t *testing.T) {
	for _, tc := range chunkCases {
		checkReadChunk(t, []byte(tc.in))
		content, chars := ChunkOutput([]byte(tc.in))
		if content != tc.content || chars != tc.chars {
			t.Errorf("%s: ChunkOutput = %v, %d; want %v, %d", tc.name, content, chars, tc.content, tc.chars)
		}
	}
	// The common chunk, and a whole answer with its usage, are read in one
	// pass, not by ParseChunk.
	for _, in := range []string{chunkCases[len(chunkCases)-1].in, wholeAnswer} {
		sc := chunkScanner{b: []byte(in)}
		if !sc.scan() {
			t.Fatalf("%s went to ParseChunk", in)
		}
	}
	c, err := ReadChunk([]byte(wholeAnswer))
	if err != nil || c.Usage == nil || *c.Usage != (Usage{PromptTokens: 12, CompletionTokens: 16, TotalTokens: 28}) || c.Chars != 21 {
		t.Fatalf("ReadChunk(whole answer) = %+v, %v", c, err)
	}
}

// FuzzReadChunk checks the one-pass reading answers as ParseChunk does, on
// every field a node or a gateway reads, and that the Filler completes
// the chunk the same way after either (make fuzz runs it).
func FuzzReadChunk(f *testing.F) {
	for _, tc := range chunkCases {
		f.Add([]byte(tc.in))
	}
	f.Add([]byte(wholeAnswer))
	f.Fuzz(func(t *testing.T, chunk []byte) { checkReadChunk(t, chunk) })
}

func BenchmarkReadChunk(b *testing.B) {
	b.Run("chunk", func(b *testing.B) { benchReadChunk(b, []byte(chunkCases[len(chunkCases)-1].in)) })
	b.Run("answer", func(b *testing.B) { benchReadChunk(b, []byte(wholeAnswer)) })
}

func benchReadChunk(b *testing.B, chunk []byte) {
	b.Run("ReadChunk", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ReadChunk(chunk)
		}
	})
	b.Run("ParseChunk", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ParseChunk(chunk)
		}
	})
}
