package provider

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tokenrouter/tokenrouter/internal/testkit"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
)

// A cloud provider that quotes the key it was given in its errors (some
// do) must not get the node's token into what the node relays to gateways
// or into its logs: refusals, consumer errors, and errors inside a stream.
func TestEngineErrorsNeverCarryTheToken(t *testing.T) {
	const token = "sk-live-7c1d0e5a9b8f4e2d"
	engineSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "no key", http.StatusUnauthorized)
			return
		}
		if r.Method == http.MethodGet {
			fmt.Fprint(w, `{"object":"list","data":[{"id":"gpt-x","object":"model","owned_by":"cloud"}]}`)
			return
		}
		var body bytes.Buffer
		body.ReadFrom(r.Body)
		switch {
		case strings.Contains(body.String(), "consumer-mistake"):
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":{"message":"bad messages for key %s","type":"invalid_request_error","param":"messages","code":null}}`, token)
		case strings.Contains(body.String(), `"stream":true`):
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprintf(w, "data: {\"error\":{\"message\":\"quota exceeded for key %s\",\"type\":\"insufficient_quota\",\"code\":429}}\n\ndata: [DONE]\n\n", token)
		default:
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprintf(w, `{"error":{"message":"key %s is not allowed to use gpt-x","type":"permission_error"}}`, token)
		}
	}))
	defer engineSrv.Close()
	var logs testkit.SyncBuffer
	tn := startNode(t, engineSrv.URL+"/v1", func(c *Config) {
		c.Upstream = &engine.Upstream{BaseURL: engineSrv.URL + "/v1", Token: token}
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	for _, tc := range []struct {
		name   string
		stream bool
		body   string
	}{
		{"refused", false, chatBody("gpt-x", false)},
		{"consumer error", false, strings.Replace(chatBody("gpt-x", false), "Say hello", "consumer-mistake", 1)},
		{"error inside a stream", true, chatBody("gpt-x", true)},
	} {
		a := tn.call(t, "/chat/completions", "gpt-x", tc.stream, tc.body)
		if a.hdr.Status == http.StatusOK {
			t.Fatalf("%s: the engine's error became a 200", tc.name)
		}
		if tc.name == "consumer error" && (a.hdr.Status != http.StatusBadRequest || !strings.Contains(string(a.body(t)), "bad messages for key "+engine.Redacted)) {
			t.Fatalf("the consumer's error was not relayed, redacted: %d %+v", a.hdr.Status, a.frames)
		}
		for _, f := range a.frames {
			if strings.Contains(string(f.data), token) {
				t.Fatalf("%s: the token reached the gateway: %s", tc.name, f.data)
			}
		}
	}
	if strings.Contains(logs.String(), token) {
		t.Fatalf("the token reached the logs:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), engine.Redacted) {
		t.Fatalf("no engine error was logged at all (the test proves nothing):\n%s", logs.String())
	}
}
