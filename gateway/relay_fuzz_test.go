package gateway

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/tokenrouter/tokenrouter/nodecore/engine"
)

// FuzzRelayRewrites feeds arbitrary chunks and bodies to what the gateway
// rewrites on the way to the client: splitUsage (a streamed chunk carrying
// usage, maybe with the last words) and withCost (the billed usage put into
// an answer, given only answers engine.ReadChunk accepts, as whole() does).
// Nothing panics; what they return is a JSON object whose usage says
// exactly what was billed, and a chunk's words are never lost. withCost's
// splicing says what decoding and encoding the whole answer says, and an
// engine's usage under a key encoding/json folds to "usage" ("usAge") is
// never left beside the billed one.
func FuzzRelayRewrites(f *testing.F) {
	for _, s := range []string{
		`{"choices":[{"index":0,"delta":{"content":"end"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7},"timings":{}}`,
		`{"choices":[],"usage":{"prompt_tokens":1}}`,
		`{"choices":[{"index":0,"message":{"role":"assistant","content":"x"}}],"usage":null}`,
		`{"usage":[]}`, `[]`, `{"choices":"x"}`, `null`, `{"choices":[null]}`, `{"choices":[{"message":null}]}`,
		`{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"a"},"finish_reason":"stop"}]}`,
		`{"usage":{"prompt_tokens":2},"choices":[{"text":"a"}],"usage":null}`, `{"us\u0061ge":{"prompt_tokens":2}}`,
		`{ "choices" : [ {"message":{"content":"a","refusal":null},"logprobs":null} ] , "usage" : { "completion_tokens" : 4 } }`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if rest, usage, err := splitUsage(b); err == nil && rest != nil {
			var obj map[string]json.RawMessage
			if json.Unmarshal(rest, &obj) != nil {
				t.Fatalf("splitUsage left a chunk that is not an object: %s", rest)
			}
			for k := range obj {
				if strings.EqualFold(k, "usage") { // "Usage" is usage to encoding/json
					t.Fatalf("splitUsage left the usage in: %s", rest)
				}
			}
			_ = usage
		}
		if _, err := engine.ReadChunk(b); err != nil {
			return
		}
		out, err := withCost(b, 3, 5, 42, true)
		slow, slowErr := withCostDecoded(b, 3, 5, 42, true)
		if (err == nil) != (slowErr == nil) {
			t.Fatalf("withCost(%s): spliced err %v, decoded err %v", b, err, slowErr)
		}
		if err != nil {
			return
		}
		var a, d any
		if json.Unmarshal(out, &a) != nil || json.Unmarshal(slow, &d) != nil || !reflect.DeepEqual(a, d) {
			t.Fatalf("withCost(%s): spliced %s, decoded %s", b, out, slow)
		}
		var got struct {
			Usage struct {
				Prompt     int64   `json:"prompt_tokens"`
				Completion int64   `json:"completion_tokens"`
				Total      int64   `json:"total_tokens"`
				CostUcr    int64   `json:"cost_ucr"`
				Cost       float64 `json:"cost"`
				Estimated  bool    `json:"estimated"`
			} `json:"usage"`
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("withCost gave invalid JSON %s: %v", out, err)
		}
		u := got.Usage
		if u.Prompt != 3 || u.Completion != 5 || u.Total != 8 || u.CostUcr != 42 || u.Cost != 0.000042 || !u.Estimated {
			t.Fatalf("withCost's usage does not say what was billed: %s", out)
		}
	})
}
