package engine

import "testing"

func TestChunkUsage(t *testing.T) {
	u := &Usage{PromptTokens: 3, CompletionTokens: 4, TotalTokens: 7}
	for _, tc := range []struct {
		name, in string
		want     *Usage
	}{
		{"absent", `{"id":"x","choices":[{"delta":{"content":"hi"}}]}`, nil},
		{"null", `{"id":"x","choices":[],"usage":null}`, nil},
		{"object", `{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}`, u},
		{"space after colon", `{"choices":[],"usage": {"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}`, u},
		{"space before colon", `{"choices":[],"usage" : {"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}`, u},
		{"newline", "{\"usage\":\n  {\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}", u},
		{"extra fields", `{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":0},"cost":0.1}}`, u},
		{"empty object", `{"usage":{}}`, &Usage{}},
		{"nested only", `{"choices":[{"delta":{"content":"{\"usage\":{\"prompt_tokens\":1}}"}}]}`, nil},
		{"nested object", `{"x":{"usage":{"prompt_tokens":1}}}`, nil},
		{"malformed", `{"usage":{"prompt_tokens":`, nil},
		{"done", `[DONE]`, nil},
		{"empty", ``, nil},
	} {
		got := ChunkUsage([]byte(tc.in))
		if (got == nil) != (tc.want == nil) || (got != nil && *got != *tc.want) {
			t.Errorf("%s: ChunkUsage = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestChunkHasContent(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     bool
	}{
		{"chat content", `{"choices":[{"index":0,"delta":{"content":"lorem "}}]}`, true},
		{"chat role chunk", `{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`, false},
		{"chat null content", `{"choices":[{"delta":{"content":null}}]}`, false},
		{"finish chunk", `{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}`, false},
		{"usage chunk", `{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`, false},
		{"usage null chunk", `{"choices":[{"delta":{"content":"x"}}],"usage":null}`, true},
		{"text", `{"object":"text_completion","choices":[{"text":"lorem ","index":0}]}`, true},
		{"empty text", `{"object":"text_completion","choices":[{"text":"","finish_reason":"length"}]}`, false},
		{"second choice", `{"choices":[{"delta":{}},{"delta":{"content":"x"}}]}`, true},
		{"tool call", `{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}`, true},
		{"reasoning", `{"choices":[{"delta":{"reasoning_content":"hmm"}}]}`, true},
		{"content parts", `{"choices":[{"delta":{"content":[{"type":"text","text":"x"}]}}]}`, true},
		{"odd types elsewhere", `{"choices":[{"delta":{"content":"x","reasoning":{"a":1}}}]}`, true},
		{"no choices", `{"id":"x"}`, false},
		{"done", `[DONE]`, false},
		{"malformed", `{"choices":[{"delta":{"content":"x"`, false},
	} {
		if got := ChunkHasContent([]byte(tc.in)); got != tc.want {
			t.Errorf("%s: ChunkHasContent = %v, want %v", tc.name, got, tc.want)
		}
	}
}
