package openai

import (
	"errors"
	"net/http/httptest"
	"testing"
)

func TestParseMeta(t *testing.T) {
	cases := []struct {
		body string
		want Meta
		code string // "" = no error
	}{
		{`{"model":"m","messages":[]}`, Meta{Model: "m", N: 1}, ""},
		{`{"model":"m","stream":true,"stream_options":{"include_usage":true}}`, Meta{Model: "m", Stream: true, IncludeUsage: true, N: 1}, ""},
		{`{"model":"m","max_tokens":7,"n":3}`, Meta{Model: "m", MaxTokens: 7, MaxTokensParam: "max_tokens", N: 3}, ""},
		{`{"model":"m","max_completion_tokens":9,"max_tokens":7}`, Meta{Model: "m", MaxTokens: 9, MaxTokensParam: "max_completion_tokens", N: 1}, ""},
		// The larger limit counts, whichever key holds it: engines honour one or the other.
		{`{"model":"m","max_completion_tokens":10,"max_tokens":100000000}`, Meta{Model: "m", MaxTokens: 100000000, MaxTokensParam: "max_tokens", N: 1}, ""},
		{`{"model":null,"stream":null,"stream_options":null}`, Meta{N: 1}, ""},
		{`{"model":"m","tools":[{"type":"function"}],"response_format":{"type":"json_object"}}`, Meta{Model: "m", N: 1}, ""},
		{`{"model":`, Meta{}, "invalid_json"},
		{`[1,2]`, Meta{}, "invalid_json"},
		{`null`, Meta{}, "invalid_json"},
		{`{"model":5}`, Meta{}, "invalid_type"},
		{`{"model":"m","stream":"yes"}`, Meta{}, "invalid_type"},
		{`{"model":"m","stream_options":[]}`, Meta{}, "invalid_type"},
		{`{"model":"m","max_tokens":-1}`, Meta{}, "invalid_type"},
		{`{"model":"m","n":0}`, Meta{}, "invalid_value"},
		// A key that differs only in case would make Go engines and the gateway disagree.
		{`{"model":"m","Stream":true}`, Meta{}, "invalid_value"},
		{`{"Model":"cheap","model":"dear"}`, Meta{}, "invalid_value"},
	}
	for _, tc := range cases {
		got, err := ParseMeta([]byte(tc.body))
		var re *RequestError
		switch {
		case tc.code == "" && err != nil:
			t.Errorf("%s: unexpected error %v", tc.body, err)
		case tc.code != "" && (!errors.As(err, &re) || re.Code != tc.code):
			t.Errorf("%s: error %v, want code %s", tc.body, err, tc.code)
		case tc.code == "" && got != tc.want:
			t.Errorf("%s: %+v, want %+v", tc.body, got, tc.want)
		}
	}
}

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
	for _, s := range []string{`{"model":"m","stream":true}`, `{"model":"m","stream_options":{"include_usage":true},"n":2}`, `{`, `[]`, `{"Model":"x"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		a, errA := ParseMeta(body)
		b, errB := ParseMeta(body)
		if (errA == nil) != (errB == nil) || a != b {
			t.Fatalf("not deterministic: %+v %v / %+v %v", a, errA, b, errB)
		}
		if errA == nil && (a.N < 1 || a.MaxTokens < 0) {
			t.Fatalf("accepted out-of-range values: %+v", a)
		}
	})
}
