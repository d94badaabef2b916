package openai

import (
	"encoding/json"
	"errors"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func TestParseMeta(t *testing.T) {
	cases := []struct {
		body  string
		want  Meta
		code  string // "" = no error
		param string // the param an error names
	}{
		{`{"model":"m","messages":[]}`, Meta{Model: "m"}, "", ""},
		{`{"model":"m","stream":true,"stream_options":{"include_usage":true}}`, Meta{Model: "m", Stream: true, IncludeUsage: true}, "", ""},
		{`{"model":"m","max_tokens":7,"n":1}`, Meta{Model: "m", MaxTokens: 7, MaxTokensParam: "max_tokens"}, "", ""},
		{`{"model":"m","max_completion_tokens":9,"max_tokens":7}`, Meta{Model: "m", MaxTokens: 9, MaxTokensParam: "max_completion_tokens"}, "", ""},
		// The larger limit counts, whichever key holds it: engines honour one or the other.
		{`{"model":"m","max_completion_tokens":10,"max_tokens":100000000}`, Meta{Model: "m", MaxTokens: 100000000, MaxTokensParam: "max_tokens"}, "", ""},
		// llama.cpp's server takes n_predict over max_tokens: it is a limit too.
		{`{"model":"m","max_tokens":1,"n_predict":300}`, Meta{Model: "m", MaxTokens: 300, MaxTokensParam: "n_predict"}, "", ""},
		// Escapes are read as every decoder reads them.
		{`{"model":"m","max\u005ftokens":5}`, Meta{Model: "m", MaxTokens: 5, MaxTokensParam: "max_tokens"}, "", ""},
		{`{"model":null,"stream":null,"stream_options":null,"max_tokens":null}`, Meta{}, "", ""},
		{`{"model":"m","tools":[{"type":"function"}],"response_format":{"type":"json_object"},"temperature":0.5,"top_p":1,"stop":null}`, Meta{Model: "m"}, "", ""},
		{`{"model":"m","logprobs":true}`, Meta{Model: "m"}, "", ""}, // chat: a boolean
		{`{"model":"m","logprobs":3}`, Meta{Model: "m"}, "", ""},    // completions: an integer
		{` {"model":"m"} ` + "\n", Meta{Model: "m"}, "", ""},
		{`{"model":`, Meta{}, "invalid_json", ""},
		{`{"model":"m"}{}`, Meta{}, "invalid_json", ""},
		{`{"model":"m",}`, Meta{}, "invalid_json", ""},
		{``, Meta{}, "invalid_json", ""},
		{`[1,2]`, Meta{}, "invalid_json", ""},
		{`null`, Meta{}, "invalid_json", ""},
		{`{"model":5}`, Meta{}, "invalid_type", "model"},
		{`{"model":"m","stream":"yes"}`, Meta{}, "invalid_type", "stream"},
		{`{"model":"m","stream_options":[]}`, Meta{}, "invalid_type", "stream_options"},
		{`{"model":"m","stream_options":{"include_usage":1}}`, Meta{}, "invalid_type", "stream_options.include_usage"},
		{`{"model":"m","temperature":"x"}`, Meta{}, "invalid_type", "temperature"},
		{`{"model":"m","messages":"hi"}`, Meta{}, "invalid_type", "messages"},
		{`{"model":"m","max_tokens":5.0}`, Meta{}, "invalid_type", "max_tokens"},
		{`{"model":"m","max_tokens":1e3}`, Meta{}, "invalid_type", "max_tokens"},
		{`{"model":"m","max_tokens":-1}`, Meta{}, "invalid_value", "max_tokens"},
		{`{"model":"m","max_tokens":99999999999999999999}`, Meta{}, "invalid_value", "max_tokens"},
		{`{"model":"m","n":0}`, Meta{}, "invalid_value", "n"},
		// More than one choice is refused, never silently one.
		{`{"model":"m","n":2}`, Meta{}, "invalid_value", "n"},
		{`{"model":"m","best_of":3}`, Meta{}, "invalid_value", "best_of"},
		// A key that differs only in case would make Go engines and the gateway disagree.
		{`{"model":"m","Stream":true}`, Meta{}, "unknown_parameter", "Stream"},
		{`{"Model":"cheap","model":"dear"}`, Meta{}, "unknown_parameter", "Model"},
		{`{"model":"m","max_tokens":1,"MAX_TOKENS":300}`, Meta{}, "unknown_parameter", "MAX_TOKENS"},
		{`{"model":"m","max_tokens":1,"Max_tokens":300}`, Meta{}, "unknown_parameter", "Max_tokens"},
		{`{"model":"m","max_tokens":1,"MAX_COMPLETION_TOKENS":300}`, Meta{}, "unknown_parameter", "MAX_COMPLETION_TOKENS"},
		{`{"model":"m","N":2}`, Meta{}, "unknown_parameter", "N"},
		{`{"model":"m","stream":true,"stream_options":{"include_usage":false,"Include_Usage":true}}`, Meta{}, "unknown_parameter", "stream_options.Include_Usage"},
		// Folds encoding/json makes beyond ASCII: the long s and the Kelvin sign.
		{"{\"model\":\"m\",\"max_tokens\":1,\"max_to\u212aens\":300}", Meta{}, "unknown_parameter", "max_to\u212aens"},
		{`{"model":"m","stream":false,"ſtream":true}`, Meta{}, "unknown_parameter", "ſtream"},
		// The same key twice: decoders disagree on which one counts.
		{`{"model":"m","max_tokens":1,"max_tokens":300}`, Meta{}, "duplicate_parameter", "max_tokens"},
		{`{"model":"m","max_tokens":1,"max\u005ftokens":300}`, Meta{}, "duplicate_parameter", "max_tokens"},
		{`{"model":"a","model":"b"}`, Meta{}, "duplicate_parameter", "model"},
		{`{"model":"m","user":"a","user":"b"}`, Meta{}, "duplicate_parameter", "user"},
		{`{"model":"m","stream":true,"stream_options":{"include_usage":false,"include_usage":true}}`, Meta{}, "duplicate_parameter", "stream_options.include_usage"},
	}
	for _, tc := range cases {
		got, err := ParseMeta([]byte(tc.body))
		var re *RequestError
		switch {
		case tc.code == "" && err != nil:
			t.Errorf("%s: unexpected error %v", tc.body, err)
		case tc.code != "" && (!errors.As(err, &re) || re.Code != tc.code):
			t.Errorf("%s: error %v, want code %s", tc.body, err, tc.code)
		case tc.code != "" && re.Param != tc.param:
			t.Errorf("%s: error names param %q, want %q", tc.body, re.Param, tc.param)
		case tc.code != "" && goTypeName.MatchString(re.Message):
			t.Errorf("%s: the message shows Go's types: %s", tc.body, re.Message)
		case tc.code == "" && got != tc.want:
			t.Errorf("%s: %+v, want %+v", tc.body, got, tc.want)
		}
	}
}

// goTypeName matches what encoding/json says of Go types, which a consumer
// must never see.
var goTypeName = regexp.MustCompile(`Go (value|struct)|of type [a-z]|\bint64\b|\bfloat64\b|map\[`)

func TestBearerKey(t *testing.T) {
	for h, want := range map[string]string{
		"Bearer trk_abc": "trk_abc", "bearer  trk_x ": "trk_x", "Basic abc": "", "Bearer ": "", "": "",
	} {
		r := httptest.NewRequest("GET", "/", nil)
		if h != "" {
			r.Header.Set("Authorization", h)
		}
		got, ok := BearerKey(r)
		if got != want || ok != (want != "") {
			t.Errorf("%q: %q %v, want %q", h, got, ok, want)
		}
	}
}

// FuzzParseMeta: no input panics, and a body it accepts is read the same
// way twice (parsing is deterministic).
func FuzzParseMeta(f *testing.F) {
	for _, s := range []string{`{"model":"m","stream":true}`, `{"model":"m","stream_options":{"include_usage":true},"n":1}`, `{"model":"m","max_tokens":1,"MAX_TOKENS":300}`, `{"max_tokens":1,"max\\u005ftokens":2}`, `{`, `[]`, `{"Model":"x"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		a, errA := ParseMeta(body)
		b, errB := ParseMeta(body)
		if (errA == nil) != (errB == nil) || a != b {
			t.Fatalf("not deterministic: %+v %v / %+v %v", a, errA, b, errB)
		}
		// The walk agrees with a decoder: an accepted body is an object
		// whose keys, decoded, are all distinct and whose model, stream and
		// limits are what Meta says.
		if errA == nil {
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(body, &obj); err != nil {
				t.Fatalf("accepted a body a decoder refuses: %v", err)
			}
			var v struct {
				Model     *string `json:"model"`
				Stream    *bool   `json:"stream"`
				MaxTokens *int64  `json:"max_tokens"`
			}
			json.Unmarshal(body, &v)
			if v.Model != nil && *v.Model != a.Model || v.Stream != nil && *v.Stream != a.Stream || v.MaxTokens != nil && *v.MaxTokens > a.MaxTokens {
				t.Fatalf("a decoder reads %+v, ParseMeta %+v", v, a)
			}
		}
		if errA == nil && a.MaxTokens < 0 {
			t.Fatalf("accepted out-of-range values: %+v", a)
		}
	})
}

// BenchmarkParseMeta reads a short chat body and one with a 64 KiB
// conversation: ParseMeta runs on every call, on the gateway and the node.
func BenchmarkParseMeta(b *testing.B) {
	long := `{"model":"m","messages":[` + strings.Repeat(`{"role":"user","content":"`+strings.Repeat("lorem ipsum ", 40)+`"},`, 130) +
		`{"role":"user","content":"end"}],"max_tokens":100,"temperature":0.7,"stream":true,"stream_options":{"include_usage":true}}`
	for name, body := range map[string]string{
		"short": `{"model":"synthetic-1","messages":[{"role":"user","content":"Hello there, how are you?"}],"max_tokens":64,"stream":true}`,
		"64KiB": long,
	} {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, err := ParseMeta([]byte(body)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
