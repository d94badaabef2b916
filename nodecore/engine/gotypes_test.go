package engine

import (
	"encoding/json"
	"regexp"
	"testing"
)

func TestPlainTypeErrors(t *testing.T) {
	var chat chatRequest
	err := json.Unmarshal([]byte(`{"model":"m","messages":"hi"}`), &chat)
	var n int
	err2 := json.Unmarshal([]byte(`"x"`), &n)
	var maxTok struct {
		MaxTokens *int `json:"max_tokens"`
	}
	err3 := json.Unmarshal([]byte(`{"max_tokens":5.5}`), &maxTok)
	for _, tc := range []struct{ in, want string }{
		{err.Error(), "Invalid type for 'messages': expected an array, but got a string instead."},
		{"could not parse: " + err2.Error(), "could not parse: Invalid type in the request: expected an integer, but got a string instead."},
		{err3.Error(), "Invalid type for 'max_tokens': expected an integer, but got a number 5.5 instead."},
		{"nothing of Go here", "nothing of Go here"},
	} {
		got := PlainTypeErrors(tc.in)
		if got != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", tc.in, got, tc.want)
		}
		if regexp.MustCompile(`Go (value|struct)|engine\.|\[\]`).MatchString(got) {
			t.Errorf("%q still shows Go types", got)
		}
	}
}
