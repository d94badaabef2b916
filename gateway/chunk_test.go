package gateway

import (
	"testing"

	"github.com/tokenrouter/tokenrouter/nodecore/engine"
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
	{"real chunk", `{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1795784086,"model":"synthetic-1","system_fingerprint":"synthetic","choices":[{"index":0,"delta":{"content":"pariatur "},"logprobs":null,"finish_reason":null}],"usage":null}`, true, 9},
}

// parseChunkOutput is what the relay asked of engine.ParseChunk before
// chunkOutput: the definition chunkOutput must agree with.
func parseChunkOutput(b []byte) (bool, int64) {
	ch, err := engine.ParseChunk(b)
	if err != nil || !ch.Content {
		return false, 0
	}
	return true, ch.Chars
}

func TestChunkOutput(t *testing.T) {
	for _, tc := range chunkCases {
		content, chars := chunkOutput([]byte(tc.in))
		wc, wn := parseChunkOutput([]byte(tc.in))
		if content != tc.content || chars != tc.chars || wc != tc.content || wn != tc.chars {
			t.Errorf("%s: chunkOutput = %v, %d; ParseChunk = %v, %d; want %v, %d", tc.name, content, chars, wc, wn, tc.content, tc.chars)
		}
	}
}

// FuzzChunkOutput checks the one-pass scanner answers as engine.ParseChunk
// does (make fuzz runs it).
func FuzzChunkOutput(f *testing.F) {
	for _, tc := range chunkCases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, chunk []byte) {
		content, chars := chunkOutput(chunk)
		wc, wn := parseChunkOutput(chunk)
		if content != wc || chars != wn {
			t.Fatalf("chunkOutput(%q) = %v, %d; engine.ParseChunk says %v, %d", chunk, content, chars, wc, wn)
		}
	})
}

func BenchmarkChunkOutput(b *testing.B) {
	chunk := []byte(chunkCases[len(chunkCases)-1].in)
	b.Run("scanner", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			chunkOutput(chunk)
		}
	})
	b.Run("ParseChunk", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			parseChunkOutput(chunk)
		}
	})
}
