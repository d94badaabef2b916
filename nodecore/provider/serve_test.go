package provider

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/nodecore/engine/enginetest"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// newHost starts a real libp2p host on loopback.
func newHost(t *testing.T) *p2p.Host {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := p2p.NewHost(ctx, p2p.Config{DataDir: t.TempDir(), Listen: []string{"/ip4/127.0.0.1/tcp/0"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// testNode is a running node in front of an upstream engine, and a
// gateway host connected to it that speaks /tokenrouter/infer/1.
type testNode struct {
	*Node
	gw     *p2p.Host
	claims *p2p.ClaimVerifier // the settlement peer's check of the node's claim MACs
}

// startNode runs a node on baseURL with cfg's Capacity, ModelCapacity and
// Models applied over the defaults, and connects a gateway host to it.
func startNode(t *testing.T, baseURL string, tweak func(*Config)) *testNode {
	t.Helper()
	platformKey, platform := testkit.RandomPeer(t)
	claims, err := p2p.NewClaimVerifier(platformKey)
	if err != nil {
		t.Fatal(err)
	}
	h := newHost(t)
	cfg := DefaultConfig()
	cfg.Host, cfg.Upstream, cfg.Platform = h, &engine.Upstream{BaseURL: baseURL}, platform
	cfg.Hardware = "test"
	cfg.Announce, cfg.Heartbeat = 100*time.Millisecond, 200*time.Millisecond
	if tweak != nil {
		tweak(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx, func() { close(ready) }) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("node stopped: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("node not ready")
	}
	gw := newHost(t)
	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ccancel()
	if err := gw.Connect(cctx, peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}); err != nil {
		t.Fatal(err)
	}
	return &testNode{Node: n, gw: gw, claims: claims}
}

// answer is everything a node sent for one call.
type answer struct {
	hdr     p2p.InferHeader
	frames  []frame // data and usage frames, in order
	claims  []claimSeen
	trailer *p2p.Trailer
}

// claimSeen is a claim a node sent during a stream, and how many data and
// usage frames had come before it.
type claimSeen struct {
	p2p.Trailer
	after int
}

type frame struct {
	typ  byte
	data []byte
}

// body returns the single data frame of a non-streamed answer or error.
func (a *answer) body(t *testing.T) []byte {
	t.Helper()
	if len(a.frames) != 1 || a.frames[0].typ != p2p.FrameData {
		t.Fatalf("want one data frame, got %d", len(a.frames))
	}
	return a.frames[0].data
}

// call opens /tokenrouter/infer/1 to the node as gateway/proxy.go does and
// reads the whole answer.
func (tn *testNode) call(t *testing.T, path, headerModel string, stream bool, body string) *answer {
	t.Helper()
	s := tn.open(t, path, headerModel, stream, body)
	defer s.Close()
	return readAnswer(t, bufio.NewReader(s), tn)
}

var reqSeq struct {
	sync.Mutex
	n int
}

// open sends the request and body frames and returns the stream.
func (tn *testNode) open(t *testing.T, path, headerModel string, stream bool, body string) network.Stream {
	t.Helper()
	s := tn.stream(t)
	reqSeq.Lock()
	reqSeq.n++
	id := fmt.Sprintf("req_%d", reqSeq.n)
	reqSeq.Unlock()
	send(t, s, id, path, headerModel, stream, body)
	return s
}

func readAnswer(t *testing.T, r *bufio.Reader, tn *testNode) *answer {
	t.Helper()
	typ, payload, err := p2p.ReadFrame(r, nil, p2p.MaxFrame)
	if err != nil || typ != p2p.FrameHeader {
		t.Fatalf("no header: %v %q", err, typ)
	}
	a := &answer{}
	if err := json.Unmarshal(payload, &a.hdr); err != nil {
		t.Fatal(err)
	}
	for {
		typ, payload, err := p2p.ReadFrame(r, nil, p2p.MaxFrame)
		if err != nil {
			return a // an answer without a trailer ends here
		}
		switch typ {
		case p2p.FrameData, p2p.FrameUsage:
			a.frames = append(a.frames, frame{typ, append([]byte(nil), payload...)})
		case p2p.FrameClaim, p2p.FrameTrailer:
			var tr p2p.Trailer
			if err := json.Unmarshal(payload, &tr); err != nil {
				t.Fatal(err)
			}
			if err := tn.claims.Verify(tr.Claim, tr.MAC); err != nil {
				t.Fatalf("claim MAC: %v", err)
			}
			if tr.Claim.Node != tn.cfg.Host.ID().String() || tr.Claim.Gateway != tn.gw.ID().String() {
				t.Errorf("claim for %s/%s", tr.Claim.Node, tr.Claim.Gateway)
			}
			if typ == p2p.FrameClaim {
				a.claims = append(a.claims, claimSeen{tr, len(a.frames)})
				continue
			}
			a.trailer = &tr
			return a
		default:
			t.Fatalf("unexpected frame %q", typ)
		}
	}
}

func chatBody(model string, stream bool) string {
	return fmt.Sprintf(`{"model":%q,"stream":%v,"messages":[{"role":"user","content":"Say hello, please"}]}`, model, stream)
}

// contentOf returns the generated text across chunks or an answer.
func contentOf(t *testing.T, frames []frame) string {
	t.Helper()
	var out strings.Builder
	for _, f := range frames {
		var v struct {
			Choices []struct {
				Text    string
				Delta   struct{ Content *string }
				Message struct{ Content *string }
			}
		}
		if err := json.Unmarshal(f.data, &v); err != nil {
			t.Fatalf("%v: %s", err, f.data)
		}
		for _, c := range v.Choices {
			out.WriteString(c.Text)
			for _, p := range []*string{c.Delta.Content, c.Message.Content} {
				if p != nil {
					out.WriteString(*p)
				}
			}
		}
	}
	return out.String()
}

// conforming reports whether a chunk or answer has what OpenAI's SDKs need.
func conforming(b []byte, object string) bool {
	var v struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		Model   *string
	}
	return json.Unmarshal(b, &v) == nil && v.ID != "" && v.Object == object && v.Created > 0 && v.Model != nil
}

func TestServeQuirkyEngines(t *testing.T) {
	reply := strings.Join(enginetest.DefaultReply, "")
	for _, f := range []enginetest.Flavor{enginetest.Ollama, enginetest.NoUsage, enginetest.LlamaCpp,
		enginetest.VLLM, enginetest.Cloud, enginetest.MLX, enginetest.Bare} {
		t.Run(string(f), func(t *testing.T) {
			e := enginetest.Start(enginetest.Config{Flavor: f})
			defer e.Close()
			tn := startNode(t, e.BaseURL(), nil)
			engineID := enginetest.DefaultModels(f)[0]
			model := engine.CanonicalModel(engineID)
			hasUsage := f != enginetest.NoUsage && f != enginetest.MLX

			body := chatBody(model, true)
			a := tn.call(t, "/chat/completions", model, true, body)
			if a.hdr.Status != 200 || a.trailer == nil {
				t.Fatalf("status %d, trailer %v", a.hdr.Status, a.trailer)
			}
			for i, fr := range a.frames {
				if !conforming(fr.data, engine.ObjectChatChunk) {
					t.Errorf("chunk %d does not conform: %s", i, fr.data)
				}
				if strings.Contains(string(fr.data), `"error"`) {
					t.Errorf("chunk %d: %s", i, fr.data)
				}
			}
			if got := contentOf(t, a.frames); got != reply {
				t.Errorf("content %q", got)
			}
			cl := a.trailer.Claim
			if cl.Incomplete || cl.Estimated == hasUsage || cl.Model != model {
				t.Errorf("claim %+v", cl)
			}
			chars := int64(len([]rune(reply)))
			want := engine.EstimateUsage("/chat/completions", []byte(body), chars, int64(len(enginetest.DefaultReply)))
			if hasUsage {
				want = engine.Usage{PromptTokens: 3, CompletionTokens: int64(len(enginetest.DefaultReply))} // the test engine counts words
			}
			if cl.PromptTokens != want.PromptTokens || cl.CompletionTokens != want.CompletionTokens {
				t.Errorf("claimed %d+%d, want %d+%d", cl.PromptTokens, cl.CompletionTokens, want.PromptTokens, want.CompletionTokens)
			}
			usageFrames := 0
			for _, fr := range a.frames {
				if fr.typ == p2p.FrameUsage {
					usageFrames++
				}
			}
			if (usageFrames == 1) != hasUsage || usageFrames > 1 {
				t.Errorf("%d usage frames", usageFrames)
			}

			// Not streamed: one conforming answer, the same claim rules.
			body = chatBody(model, false)
			a = tn.call(t, "/chat/completions", model, false, body)
			if a.hdr.Status != 200 || a.trailer == nil || !conforming(a.body(t), engine.ObjectChatCompletion) {
				t.Fatalf("status %d: %v", a.hdr.Status, a.frames)
			}
			if a.trailer.Claim.Estimated == hasUsage || a.trailer.Claim.CompletionTokens == 0 {
				t.Errorf("claim %+v", a.trailer.Claim)
			}
			// The engine was asked for the model by its own id.
			for _, r := range e.Requests() {
				if f != enginetest.LlamaCpp && r.Model != engineID {
					t.Errorf("engine asked for %q", r.Model)
				}
			}
		})
	}
}

func TestServeEngineFailsMidStream(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  enginetest.Config
	}{
		{"vllm", enginetest.Config{Flavor: enginetest.VLLM, FailAfter: 2, FailCode: 400}},
		{"vllm eof", enginetest.Config{Flavor: enginetest.VLLM, FailAfter: 2, NoDoneAfterError: true}},
		{"llama.cpp", enginetest.Config{Flavor: enginetest.LlamaCpp, FailAfter: 2}},
		{"llama.cpp error line", enginetest.Config{Flavor: enginetest.LlamaCpp, FailAfter: 2, OldErrors: true}},
		{"openrouter", enginetest.Config{Flavor: enginetest.Cloud, FailAfter: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := enginetest.Start(tc.cfg)
			defer e.Close()
			tn := startNode(t, e.BaseURL(), nil)
			model := enginetest.DefaultModels(tc.cfg.Flavor)[0]
			body := chatBody(model, true)
			a := tn.call(t, "/chat/completions", model, true, body)
			if a.hdr.Status != 200 || a.trailer == nil {
				t.Fatalf("status %d trailer %v", a.hdr.Status, a.trailer)
			}
			for _, fr := range a.frames {
				if strings.Contains(string(fr.data), `"error"`) || fr.typ != p2p.FrameData {
					t.Errorf("relayed %q %s", fr.typ, fr.data)
				}
			}
			relayed := contentOf(t, a.frames)
			if relayed != strings.Join(enginetest.DefaultReply[:2], "") {
				t.Errorf("relayed %q", relayed)
			}
			// Failed, and billed only for what was relayed, by estimate.
			cl := a.trailer.Claim
			want := engine.EstimateUsage("/chat/completions", []byte(body), int64(len([]rune(relayed))), 2)
			if !cl.Incomplete || !cl.Estimated || cl.CompletionTokens != want.CompletionTokens || cl.PromptTokens != want.PromptTokens {
				t.Errorf("claim %+v, want %+v", cl, want)
			}
		})
	}
}

func TestServeEngineFailsBeforeFirstChunk(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       enginetest.Config
		maxTokens int
		status    int
		nodeFault bool
	}{
		// vLLM reports a request it cannot serve inside a 200 stream: the
		// consumer's mistake is relayed as a 400, not as a broken stream.
		{"vllm in-stream 400", enginetest.Config{Flavor: enginetest.VLLM, FailAtStart: true, FailCode: 400}, 0, 400, false},
		{"vllm in-stream 500", enginetest.Config{Flavor: enginetest.VLLM, FailAtStart: true}, 0, 500, true},
		{"openai shape, no code", enginetest.Config{Flavor: enginetest.Bare, FailAtStart: true}, 0, 502, true},
		// Errors answered with a status, in each engine's own shape.
		{"llama.cpp 400", enginetest.Config{Flavor: enginetest.LlamaCpp}, enginetest.RejectMaxTokens + 1, 400, false},
		{"vllm 400", enginetest.Config{Flavor: enginetest.VLLM}, enginetest.RejectMaxTokens + 1, 400, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := enginetest.Start(tc.cfg)
			defer e.Close()
			tn := startNode(t, e.BaseURL(), nil)
			model := enginetest.DefaultModels(tc.cfg.Flavor)[0]
			body := fmt.Sprintf(`{"model":%q,"stream":true,"max_tokens":%d,"messages":[{"role":"user","content":"hi"}]}`, model, tc.maxTokens)
			a := tn.call(t, "/chat/completions", model, true, body)
			if a.hdr.Status != tc.status || a.hdr.NodeFault != tc.nodeFault || a.trailer != nil {
				t.Fatalf("header %+v trailer %v", a.hdr, a.trailer)
			}
			var shaped struct {
				Error struct {
					Message string `json:"message"`
					Type    string `json:"type"`
				} `json:"error"`
			}
			if err := json.Unmarshal(a.body(t), &shaped); err != nil || shaped.Error.Message == "" || strings.HasPrefix(shaped.Error.Message, "{") {
				t.Errorf("error body %s", a.body(t))
			}
		})
	}
}

func TestServeEngineSilentStream(t *testing.T) {
	// An engine that answers 200 and closes the stream without a word: the
	// node fails the call before its header, so the gateway can fail over.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/models" {
			fmt.Fprint(w, `{"data":[{"id":"m"}]}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, ": ping\n\n")
	}))
	defer srv.Close()
	tn := startNode(t, srv.URL+"/v1", nil)
	a := tn.call(t, "/chat/completions", "m", true, chatBody("m", true))
	if a.hdr.Status != 502 || !a.hdr.NodeFault || a.trailer != nil {
		t.Errorf("header %+v", a.hdr)
	}
}

func TestServeOllamaNames(t *testing.T) {
	e := enginetest.Start(enginetest.Config{Flavor: enginetest.Ollama})
	defer e.Close()
	tn := startNode(t, e.BaseURL(), nil)
	if got := fmt.Sprint(tn.Models()); got != "[llama3.2 qwen2.5:7b]" {
		t.Fatalf("announced %s", got)
	}
	for _, tc := range []struct {
		header, body string
		status       int
		engineSees   string
	}{
		{"llama3.2", "llama3.2", 200, "llama3.2:latest"},
		{"llama3.2:latest", "llama3.2:latest", 200, "llama3.2:latest"},
		{"llama3.2", "llama3.2:latest", 200, "llama3.2:latest"}, // a gateway that canonicalized the route, not the body
		{"qwen2.5:7b", "qwen2.5:7b", 200, "qwen2.5:7b"},
		{"qwen2.5:7b:latest", "qwen2.5:7b", 200, "qwen2.5:7b"}, // ":latest" of a tagged name is the name
		{"qwen2.5", "qwen2.5", 404, ""},                        // a tag is part of the name
		{"llama3.2", "qwen2.5:7b", 400, ""},                    // header and body disagree
		{"llama3.2:latest", "llama3.1", 400, ""},
	} {
		before := len(e.Requests())
		a := tn.call(t, "/chat/completions", tc.header, false, chatBody(tc.body, false))
		if a.hdr.Status != tc.status {
			t.Errorf("%s/%s: status %d", tc.header, tc.body, a.hdr.Status)
			continue
		}
		if tc.status != 200 {
			continue
		}
		if a.trailer == nil || a.trailer.Claim.Model != tc.header {
			t.Errorf("%s: claim %+v", tc.header, a.trailer)
		}
		if reqs := e.Requests(); len(reqs) != before+1 || reqs[before].Model != tc.engineSees {
			t.Errorf("%s: engine saw %+v", tc.body, reqs[before:])
		}
	}
}

func TestServeModelsWithSlashesAndColons(t *testing.T) {
	models := []string{"Qwen/Qwen2.5-7B-Instruct", "mlx-community/Llama-3.2-3B-Instruct-4bit", "meta-llama/llama-3.1-8b-instruct:free"}
	e := enginetest.Start(enginetest.Config{Flavor: enginetest.VLLM, Models: models})
	defer e.Close()
	tn := startNode(t, e.BaseURL(), nil)
	// The announcement a gateway receives over GossipSub names them intact.
	topic, err := p2p.JoinLoadTopic(tn.gw, nil)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	for {
		m, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("no announcement: %v", err)
		}
		a, ok := m.ValidatorData.(*p2p.Announcement)
		if !ok || a.Node != tn.cfg.Host.ID().String() {
			continue
		}
		var got []string
		for _, ml := range a.Models {
			got = append(got, ml.Model)
		}
		if fmt.Sprint(got) != fmt.Sprint(models) {
			t.Fatalf("announced %q", got)
		}
		break
	}
	for _, m := range models {
		a := tn.call(t, "/chat/completions", m, true, chatBody(m, true))
		if a.hdr.Status != 200 || a.trailer == nil || a.trailer.Claim.Model != m || a.trailer.Claim.Incomplete {
			t.Errorf("%s: %+v %+v", m, a.hdr, a.trailer)
		}
	}
}

func TestServePerModelCapacity(t *testing.T) {
	gate := make(chan struct{})
	e := enginetest.Start(enginetest.Config{Flavor: enginetest.Ollama, Gate: gate})
	defer e.Close()
	tn := startNode(t, e.BaseURL(), func(c *Config) {
		c.Capacity = 2
		c.ModelCapacity = map[string]int{"llama3.2:latest": 1} // by the engine's id; "llama3.2" works too
	})
	load := func() map[string]p2p.ModelLoad {
		out := map[string]p2p.ModelLoad{}
		for _, m := range tn.Announcement().Models {
			out[m.Model] = m
		}
		return out
	}
	if l := load(); l["llama3.2"].Capacity != 1 || l["qwen2.5:7b"].Capacity != 2 {
		t.Fatalf("capacities %+v", l)
	}
	// One call holds llama3.2's only slot (the engine is gated).
	held := tn.open(t, "/chat/completions", "llama3.2", true, chatBody("llama3.2", true))
	waitFor(t, "llama3.2 in flight", func() bool { return load()["llama3.2"].InFlight == 1 })
	// A second call to it is refused as full; the other model still serves.
	if a := tn.call(t, "/chat/completions", "llama3.2:latest", true, chatBody("llama3.2:latest", true)); a.hdr.Status != 429 || a.hdr.NodeFault {
		t.Errorf("second call: %+v", a.hdr)
	}
	other := tn.open(t, "/chat/completions", "qwen2.5:7b", true, chatBody("qwen2.5:7b", true))
	waitFor(t, "qwen in flight", func() bool { return load()["qwen2.5:7b"].InFlight == 1 })
	gw := tn.gw.ID().String()
	if l := load(); l["llama3.2"].InFlight != 1 || l["llama3.2"].InFlightBy[gw] != 1 || l["qwen2.5:7b"].InFlightBy[gw] != 1 {
		t.Errorf("load by model and gateway: %+v", l)
	}
	close(gate)
	for _, s := range []network.Stream{held, other} {
		a := readAnswer(t, bufio.NewReader(s), tn)
		s.Close()
		if a.hdr.Status != 200 || a.trailer == nil || a.trailer.Claim.Incomplete {
			t.Errorf("held call: %+v %+v", a.hdr, a.trailer)
		}
	}
	waitFor(t, "slots released", func() bool {
		l := load()
		return l["llama3.2"].InFlight == 0 && l["qwen2.5:7b"].InFlight == 0 && l["llama3.2"].InFlightBy == nil && l["qwen2.5:7b"].InFlightBy == nil
	})
}

func TestServeEmbeddingsWithoutUsage(t *testing.T) {
	e := enginetest.Start(enginetest.Config{Flavor: enginetest.NoUsage})
	defer e.Close()
	tn := startNode(t, e.BaseURL(), nil)
	body := `{"model":"qwen2.5:7b","input":["abcdefgh","ijkl"]}`
	a := tn.call(t, "/embeddings", "qwen2.5:7b", false, body)
	if a.hdr.Status != 200 || a.trailer == nil {
		t.Fatalf("%+v", a.hdr)
	}
	if cl := a.trailer.Claim; !cl.Estimated || cl.PromptTokens != 3 || cl.CompletionTokens != 0 {
		t.Errorf("claim %+v", cl)
	}
}

func TestParseModelCapacity(t *testing.T) {
	got, err := ParseModelCapacity([]string{"llama3.2:latest=2", "Qwen/Qwen2.5-7B-Instruct=16", "a=b=3"})
	if err != nil || fmt.Sprint(got) != "map[Qwen/Qwen2.5-7B-Instruct:16 a=b:3 llama3.2:latest:2]" {
		t.Errorf("%v %v", got, err)
	}
	for _, bad := range []string{"noequals", "=3", "m=0", "m=-1", "m=x", "m="} {
		if _, err := ParseModelCapacity([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, err := ParseModelCapacity([]string{"m=1", "m:latest=2"}); err == nil {
		t.Error("one model named twice accepted")
	}
	cfg := DefaultConfig()
	cfg.ModelCapacity = map[string]int{"m": 0}
	if err := cfg.modelCapacityErr(); err == nil {
		t.Error("capacity 0 validated")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServeMaxInFlight(t *testing.T) {
	// A cloud API key limits the whole engine, not each model.
	gate := make(chan struct{})
	e := enginetest.Start(enginetest.Config{Flavor: enginetest.Cloud, Gate: gate})
	defer e.Close()
	tn := startNode(t, e.BaseURL(), func(c *Config) { c.Capacity, c.MaxInFlight = 4, 1 })
	models := enginetest.DefaultModels(enginetest.Cloud)
	for _, m := range tn.Announcement().Models {
		if m.Capacity != 1 {
			t.Fatalf("%s announced capacity %d; the node takes 1 call in all", m.Model, m.Capacity)
		}
	}
	held := tn.open(t, "/chat/completions", models[0], true, chatBody(models[0], true))
	defer held.Close()
	waitFor(t, "a call in flight", func() bool { return tn.Announcement().Models[0].InFlight == 1 })
	if ms := tn.Announcement().Models; ms[0].Capacity != 1 || ms[1].Capacity != 1 || ms[1].InFlight != 0 {
		t.Fatalf("while one call holds the node: %+v (capacity never reads below 1; a call the node cannot take gets 429 node_full)", ms)
	}
	if a := tn.call(t, "/chat/completions", models[1], true, chatBody(models[1], true)); a.hdr.Status != 429 {
		t.Errorf("second model with the node at MaxInFlight: %+v", a.hdr)
	}
	close(gate)
	if a := readAnswer(t, bufio.NewReader(held), tn); a.hdr.Status != 200 || a.trailer == nil {
		t.Errorf("held call: %+v", a.hdr)
	}
	waitFor(t, "slot released", func() bool { return tn.Announcement().Models[0].InFlight == 0 })
	if a := tn.call(t, "/chat/completions", models[1], true, chatBody(models[1], true)); a.hdr.Status != 200 {
		t.Errorf("after release: %+v", a.hdr)
	}
}
