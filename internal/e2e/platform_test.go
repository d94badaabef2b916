package e2e

import (
	"net/http"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
)

// A node whose claims are for another settlement peer (started with
// another --platform, on the same bootstrap) is never routed to: this
// gateway's receipts for its calls would be refused and it would serve
// unpaid. A node of this platform started after it is routed at once.
func TestNodeOfAnotherPlatformIsNotRouted(t *testing.T) {
	m := startMesh(t, 1)
	probe := newEngineProbe(t, "synthetic-1", 0, 0)
	_, other := testkit.RandomPeer(t)
	stranger := runNode(t, m, probe.srv.URL, other.String(), "")
	addNode(t, m, probe.srv.URL, 2)     // announced after the stranger, and seen
	time.Sleep(1500 * time.Millisecond) // a heartbeat more of the stranger's
	if in, ok := instanceOf(t, m, "synthetic-1", stranger); ok {
		t.Fatalf("the gateway lists a node of another platform: %+v", in)
	}
	c := client(t, m, m.DemoKey)
	for range 12 {
		var raw *http.Response
		_, err := c.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{
			Model:     "synthetic-1",
			Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("who serves me?")},
			MaxTokens: openai.Int(3),
		}, option.WithResponseInto(&raw))
		if err != nil {
			t.Fatal(err)
		}
		if raw.Header.Get("x-tokenrouter-node") == stranger {
			t.Fatal("a call went to the node of another platform")
		}
	}
}
