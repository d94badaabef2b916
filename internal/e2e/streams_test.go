package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/tokenrouter/tokenrouter/gateway"
	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/nodecore/provider"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// The gateway's series these tests read off GET /metrics.
const (
	streamsOpened    = `tokenrouter_gateway_node_streams_total{kind="opened"}`
	streamsReused    = `tokenrouter_gateway_node_streams_total{kind="reused"}`
	upstreamFailures = `tokenrouter_gateway_upstream_failures_total`
)

// gatewayMetrics reads the gateway's /metrics: each series (name and
// labels, as written) to its value.
func gatewayMetrics(t *testing.T, m *launch.Mesh) map[string]float64 {
	t.Helper()
	resp, err := http.Get(m.GatewayURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s %s", resp.Status, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// streamCounts returns the streams opened and reused, and the upstream
// failures, the gateway counted so far.
func streamCounts(t *testing.T, m *launch.Mesh) (opened, reused, failures int) {
	t.Helper()
	mt := gatewayMetrics(t, m)
	return int(mt[streamsOpened]), int(mt[streamsReused]), int(mt[upstreamFailures])
}

// instanceOf returns what the gateway's /debug/instances says of node's
// instance of model.
func instanceOf(t *testing.T, m *launch.Mesh, model, node string) (gateway.InstanceInfo, bool) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, m.GatewayURL+"/debug/instances", nil)
	req.Header.Set("Authorization", "Bearer "+m.DemoKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var dbg struct {
		Models []gateway.ModelInfo `json:"models"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&dbg); err != nil {
		t.Fatal(err)
	}
	for _, mi := range dbg.Models {
		if mi.ID != model {
			continue
		}
		for _, in := range mi.Instances {
			if in.Node == node {
				return in, true
			}
		}
	}
	return gateway.InstanceInfo{}, false
}

// chatOnce makes one non-streamed call of n tokens and returns its cost.
func chatOnce(t *testing.T, c openai.Client, model string, n int64) int64 {
	t.Helper()
	var raw *http.Response
	resp, err := c.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model:     model,
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("say something")},
		MaxTokens: openai.Int(n),
	}, option.WithResponseInto(&raw))
	if err != nil {
		t.Fatalf("chat: %v", err)
	}
	if raw.StatusCode != http.StatusOK || len(resp.Choices) != 1 || resp.Choices[0].Message.Content == "" ||
		resp.Usage.CompletionTokens != n {
		t.Fatalf("chat: status %d, answer %+v", raw.StatusCode, resp)
	}
	return costOf(t, resp.Usage.RawJSON())
}

// streamOnce makes one streamed call of n tokens, usage asked for, and
// returns its cost.
func streamOnce(t *testing.T, c openai.Client, model string, n int64) int64 {
	t.Helper()
	s := c.Chat.Completions.NewStreaming(context.Background(), openai.ChatCompletionNewParams{
		Model:         model,
		Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("stream please")},
		MaxTokens:     openai.Int(n),
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	})
	var chunks int64
	var usage string
	for s.Next() {
		ch := s.Current()
		if len(ch.Choices) > 0 && ch.Choices[0].Delta.Content != "" {
			chunks++
		}
		if ch.JSON.Usage.Valid() && ch.Usage.TotalTokens > 0 {
			usage = ch.Usage.RawJSON()
		}
	}
	if err := s.Err(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	if chunks != n || usage == "" {
		t.Fatalf("stream: %d content chunks (want %d), usage %q", chunks, n, usage)
	}
	return costOf(t, usage)
}

// Calls to one node, one after another, run on one stream: the first call
// opens it, every later one reuses it, streamed or not, and billing is as
// if each had its own.
func TestStreamsAreReused(t *testing.T) {
	m := startMesh(t, 1)
	c := client(t, m, m.DemoKey)
	const whole, streamed = 10, 3
	var total int64
	for range whole {
		total += chatOnce(t, c, "synthetic-1", 8)
	}
	for range streamed {
		total += streamOnce(t, c, "synthetic-1", 12)
	}
	const calls = whole + streamed

	opened, reused, failures := streamCounts(t, m)
	t.Logf("%d calls: %d streams opened, %d reused, %d upstream failures", calls, opened, reused, failures)
	if opened < 1 || opened > 2 || reused < calls-2 || opened+reused != calls || failures != 0 {
		t.Fatalf("%d calls one after another ran on %d opened and %d reused streams (%d upstream failures); want about 1 opened, the rest reused",
			calls, opened, reused, failures)
	}

	a := waitCalls(t, m.GatewayURL, m.DemoKey, calls)
	if a.Calls != calls || a.SpentUcr != total {
		t.Fatalf("account after %d calls: %+v, want spent %d", calls, a, total)
	}
	if err := m.Stop(); err != nil {
		t.Fatalf("mesh stopped with errors: %v", err)
	}
	bal := ledgerSumsToZero(t, m)
	if bal[m.DemoID] != economy.StartingCreditUcr-total {
		t.Fatalf("consumer balance %d in the ledger, want %d - %d", bal[m.DemoID], economy.StartingCreditUcr, total)
	}
}

// A pooled stream whose libp2p connection closed while it sat idle is dead;
// the next call finds that out on it, goes on on a new stream, and succeeds
// without counting an upstream failure or parking the node.
func TestDeadPooledStreamIsRetried(t *testing.T) {
	hosts := make(chan *p2p.Host, 1)
	m := startMeshWith(t, launch.MeshOptions{
		Nodes: 1,
		Gateway: func(o *launch.GatewayOptions) {
			o.Tune = func(c *gateway.Config) { hosts <- c.Host }
		},
		// The gateway takes a node it lost its connection to out of the
		// candidates until its next announcement: announce often, so the
		// test need not wait the default 3 s heartbeat.
		Node: func(_ int, c *provider.Config) { c.Announce, c.Heartbeat = 100*time.Millisecond, 200*time.Millisecond },
	})
	gw := <-hosts
	node, err := peer.Decode(m.NodeIDs[0])
	if err != nil {
		t.Fatal(err)
	}
	c := client(t, m, m.DemoKey)

	chatOnce(t, c, "synthetic-1", 6) // leaves its stream in the pool
	opened0, reused0, failures0 := streamCounts(t, m)
	if opened0 != 1 || reused0 != 0 {
		t.Fatalf("after one call: %d opened, %d reused", opened0, reused0)
	}

	// Drop every connection between the gateway and the node.
	sub, err := gw.EventBus().Subscribe(new(event.EvtPeerConnectednessChanged))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := gw.Network().ClosePeer(node); err != nil {
		t.Fatalf("close the connection to the node: %v", err)
	}
	closed := time.Now()
	waitDisconnected(t, sub, node)
	if gw.Network().Connectedness(node) == network.Connected {
		t.Log("the gateway is connected to the node again already")
	}
	// Wait for an announcement heard after the close, so the node is a
	// candidate again (a call now would otherwise find no capacity: that
	// is the connection watch, not the stream pool).
	deadline := time.Now().Add(10 * time.Second)
	for {
		in, ok := instanceOf(t, m, "synthetic-1", m.NodeIDs[0])
		if ok && in.AgeMs < time.Since(closed).Milliseconds() && in.Candidate && in.Spare > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node is no candidate 10 s after its connection closed: %+v (known %v)", in, ok)
		}
		time.Sleep(20 * time.Millisecond)
	}

	start := time.Now()
	chatOnce(t, c, "synthetic-1", 6)
	took := time.Since(start)
	opened1, reused1, failures1 := streamCounts(t, m)
	t.Logf("the call after the drop took %s: %d opened, %d reused, %d upstream failures", took, opened1, reused1, failures1)
	if failures1 != failures0 {
		t.Fatalf("the dead pooled stream counted as %d upstream failure(s)", failures1-failures0)
	}
	if reused1 != reused0+1 || opened1 != opened0+1 {
		t.Fatalf("the call after the drop: %d reused (want %d: the dead stream), %d opened (want %d: its replacement)",
			reused1, reused0+1, opened1, opened0+1)
	}

	in, _ := instanceOf(t, m, "synthetic-1", m.NodeIDs[0])
	if in.State != "closed" || in.Breaker != "closed" {
		t.Fatalf("the node after a dead pooled stream: state %q breaker %q, want closed", in.State, in.Breaker)
	}
	for range 3 {
		chatOnce(t, c, "synthetic-1", 6)
	}
	opened2, reused2, failures2 := streamCounts(t, m)
	if failures2 != failures0 || opened2 != opened1 || reused2 != reused1+3 {
		t.Fatalf("the calls after: %d opened, %d reused, %d failures (before them %d, %d, %d)",
			opened2, reused2, failures2, opened1, reused1, failures1)
	}
	if a := waitCalls(t, m.GatewayURL, m.DemoKey, 5); a.Calls != 5 {
		t.Fatalf("calls %d, want 5", a.Calls)
	}
}

// waitDisconnected waits for the event saying the host's last connection
// to node closed.
func waitDisconnected(t *testing.T, sub event.Subscription, node peer.ID) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case e := <-sub.Out():
			if ev := e.(event.EvtPeerConnectednessChanged); ev.Peer == node && ev.Connectedness == network.NotConnected {
				return
			}
		case <-timeout:
			t.Fatal("no NotConnected event for the node 5 s after closing its connection")
		}
	}
}

// A client that leaves mid-stream makes the gateway send a cancel frame:
// the node stops its engine and still ends the call with its trailer, so
// the stream goes back to the pool and carries the next call; the client
// pays for what it got.
func TestClientLeavingKeepsStreamUsable(t *testing.T) {
	m := startMesh(t, 1)
	probe := newEngineProbe(t, "paced-1", 50, 0)
	addNode(t, m, probe.srv.URL, 2)
	key := newAccount(t, m)

	left := leaveStreamAfter(t, m, probe, key, 5)
	// The gateway bills a call once its stream is released: once the call
	// counts, the stream is back in the pool or closed.
	spent := checkBilledForFew(t, m, key)
	opened0, reused0, failures0 := streamCounts(t, m)
	if opened0 != 1 || reused0 != 0 || failures0 != 0 {
		t.Fatalf("after the cancelled call: %d opened, %d reused, %d failures; want 1, 0, 0", opened0, reused0, failures0)
	}

	c := client(t, m, key)
	start := time.Now()
	chatOnce(t, c, "paced-1", 3)
	took := time.Since(start)
	opened1, reused1, failures1 := streamCounts(t, m)
	t.Logf("engine stopped %s after the client left; billed %d µcr; the next call took %s (%d opened, %d reused)",
		probe.lastEnd().Sub(left), spent, took, opened1, reused1)
	if reused1 != reused0+1 || opened1 != opened0 || failures1 != failures0 {
		t.Fatalf("the call after the cancelled one: %d opened, %d reused, %d failures; want it on the cancelled call's stream (%d, %d, %d)",
			opened1, reused1, failures1, opened0, reused0+1, failures0)
	}
	if took > 2*time.Second {
		t.Fatalf("the call after the cancelled one took %s", took)
	}
	// The stream is whole: a streamed call to its end runs on it too.
	streamOnce(t, c, "paced-1", 5)
	if opened2, reused2, _ := streamCounts(t, m); opened2 != opened1 || reused2 != reused1+1 {
		t.Fatalf("the streamed call after: %d opened, %d reused (before it %d, %d)", opened2, reused2, opened1, reused1)
	}
	if a := waitCalls(t, m.GatewayURL, key, 3); a.Calls != 3 {
		t.Fatalf("calls %d, want 3", a.Calls)
	}
}
