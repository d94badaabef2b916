package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/tokenrouter/tokenrouter/gateway"
	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/nodecore/provider"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// engineLimit stands in front of an engine and answers 429, as an engine
// at its own concurrency limit does (Ollama's OLLAMA_NUM_PARALLEL, a
// provider's rate limit), past limit calls at once.
type engineLimit struct {
	slots   chan struct{}
	refused atomic.Int64
	proxy   *httputil.ReverseProxy
}

// newEngineLimit starts a limiter in front of upstream and returns it
// with the base URL to use instead.
func newEngineLimit(t *testing.T, upstream string, limit int) (*engineLimit, string) {
	u, err := url.Parse(upstream)
	if err != nil {
		t.Error(err)
		return nil, upstream
	}
	l := &engineLimit{slots: make(chan struct{}, limit), proxy: httputil.NewSingleHostReverseProxy(&url.URL{Scheme: u.Scheme, Host: u.Host})}
	l.proxy.FlushInterval = -1
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Error(err)
		return nil, upstream
	}
	srv := &http.Server{Handler: l}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return l, "http://" + ln.Addr().String() + u.Path
}

func (l *engineLimit) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		select {
		case l.slots <- struct{}{}:
			defer func() { <-l.slots }()
		default:
			l.refused.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTooManyRequests)
			fmt.Fprint(w, `{"error":{"message":"server busy, please try again","type":"rate_limit_error","code":null}}`)
			return
		}
	}
	l.proxy.ServeHTTP(w, r)
}

// A node that announces capacity 8 but serves 2 (its engine refuses past
// 2 calls at once) ends with less traffic than an honest node of capacity
// 8, and every call still succeeds: the gateway fails over on each 429,
// sees the node refused room its announcement gave, penalises it (its
// GossipSub application score falls), caps it at the 2 it served and
// gives it a smaller share of ties.
func TestLiarAboutCapacityLosesTraffic(t *testing.T) {
	const (
		model     = "synthetic-1"
		callers   = 7   // at once: the honest node alone could serve them (with a slot for a probe)
		burst     = 120 // calls by callers at once
		quiet     = 100 // calls one at a time: ties
		maxTokens = 8
	)
	limits := make(chan *engineLimit, 1)
	hosts := make(chan *p2p.Host, 1)
	m := startMeshWith(t, launch.MeshOptions{
		Nodes: 2, Capacity: 8, Rate: 200, RampStart: 1,
		Node: func(i int, c *provider.Config) {
			if i == 1 {
				var l *engineLimit
				l, c.Upstream.BaseURL = newEngineLimit(t, c.Upstream.BaseURL, 2)
				limits <- l
			}
		},
		Gateway: func(o *launch.GatewayOptions) {
			o.Tune = func(c *gateway.Config) { hosts <- c.Host }
		},
	})
	limit, gw := <-limits, <-hosts
	honest, liar := m.NodeIDs[0], m.NodeIDs[1]
	liarID, err := peer.Decode(liar)
	if err != nil {
		t.Fatal(err)
	}
	honestID, _ := peer.Decode(honest)

	call := func(c openai.Client) (string, error) {
		var raw *http.Response
		resp, err := c.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
			Model:     model,
			Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("say something")},
			MaxTokens: openai.Int(maxTokens),
		}, option.WithResponseInto(&raw))
		if err != nil {
			return "", err
		}
		if len(resp.Choices) != 1 || resp.Usage.CompletionTokens != maxTokens {
			return "", fmt.Errorf("answer %s", resp.RawJSON())
		}
		return raw.Header.Get(gateway.HeaderNode), nil
	}
	served := map[string]map[string]int{"burst": {}, "quiet": {}}
	var mu sync.Mutex
	var failed []error
	record := func(phase, node string, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failed = append(failed, err)
			return
		}
		served[phase][node]++
	}

	var next atomic.Int64
	var wg sync.WaitGroup
	for range callers {
		c := client(t, m, m.DemoKey)
		wg.Go(func() {
			for next.Add(1) <= burst {
				node, err := call(c)
				record("burst", node, err)
			}
		})
	}
	wg.Wait()
	c := client(t, m, m.DemoKey)
	for range quiet {
		node, err := call(c)
		record("quiet", node, err)
	}

	in, _ := instanceOf(t, m, model, liar)
	pen, app := gw.Scores.Penalty(liarID), gw.Scores.Score(liarID)
	gs, _ := gw.Scores.PeerScore(liarID)
	for _, phase := range []string{"burst", "quiet"} {
		t.Logf("%s: honest served %d, liar %d", phase, served[phase][honest], served[phase][liar])
	}
	t.Logf("the liar's engine refused %d calls; at the gateway: penalty %.2f units (app score %.2f, GossipSub score %.1f), tie weight %.2f, effective capacity %.0f of %d announced",
		limit.refused.Load(), pen, app, gs, in.Weight, in.Capacity, in.Declared)

	if len(failed) > 0 {
		t.Fatalf("%d calls failed; first: %v", len(failed), failed[0])
	}
	total := func(n string) int { return served["burst"][n] + served["quiet"][n] }
	if total(liar) >= total(honest) {
		t.Errorf("the liar served %d calls, the honest node %d", total(liar), total(honest))
	}
	// Its trust here (~0.3) gives it ~23% of ties (±4% over 100 calls);
	// untouched it would win ~50% (±5%).
	if share := float64(served["quiet"][liar]) / quiet; share > 0.36 {
		t.Errorf("one call at a time, the liar still won %.0f%% of them (an untouched tie is 50%%)", 100*share)
	}
	if pen <= 0 || app >= 0 || gw.Scores.Penalty(honestID) != 0 {
		t.Errorf("penalties: liar %.2f (app score %.2f), honest %.2f", pen, app, gw.Scores.Penalty(honestID))
	}
}
