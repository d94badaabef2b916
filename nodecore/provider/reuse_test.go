package provider

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/nodecore/engine/enginetest"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// send writes one call's request and body frames on s, as a gateway does.
func send(t *testing.T, s network.Stream, id, path, model string, stream bool, body string) {
	t.Helper()
	w := bufio.NewWriter(s)
	hdr, _ := json.Marshal(p2p.InferRequest{RequestID: id, Path: path, Model: model, Stream: stream})
	if err := p2p.WriteFrame(w, p2p.FrameRequest, hdr); err != nil {
		t.Fatal(err)
	}
	if err := p2p.WriteFrame(w, p2p.FrameBody, []byte(body)); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
}

func (tn *testNode) stream(t *testing.T) network.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := tn.gw.NewStream(ctx, tn.cfg.Host.ID(), p2p.ProtoInfer)
	if err != nil {
		t.Fatal(err)
	}
	s.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { s.Reset() })
	return s
}

// A stream carries calls one after another, streamed or not, each with
// its own claim; an error answer ends it.
func TestServeCallsOnOneStream(t *testing.T) {
	e := enginetest.Start(enginetest.Config{Flavor: enginetest.Ollama})
	defer e.Close()
	tn := startNode(t, e.BaseURL(), nil)
	model := enginetest.DefaultModels(enginetest.Ollama)[0]
	s := tn.stream(t)
	r := bufio.NewReader(s)
	for i := range 6 {
		id := fmt.Sprintf("req_reuse_%d", i)
		stream := i%2 == 1
		send(t, s, id, "/chat/completions", model, stream, chatBody(model, stream))
		a := readAnswer(t, r, tn)
		if a.hdr.Status != 200 || a.trailer == nil || a.trailer.Claim.RequestID != id || a.trailer.Claim.CompletionTokens == 0 {
			t.Fatalf("call %d on the stream: %+v, trailer %+v", i, a.hdr, a.trailer)
		}
		if contentOf(t, a.frames) == "" {
			t.Fatalf("call %d: no content", i)
		}
	}
	if got := len(e.Requests()); got != 6 {
		t.Fatalf("engine saw %d calls, want 6", got)
	}
	// A refused call (unknown model) is answered, then the node ends the stream.
	send(t, s, "req_reuse_bad", "/chat/completions", "no-such-model", false, chatBody("no-such-model", false))
	if a := readAnswer(t, r, tn); a.hdr.Status != 404 || a.trailer != nil {
		t.Fatalf("unknown model: %+v", a.hdr)
	}
	if _, _, err := p2p.ReadFrame(r, nil, p2p.MaxFrame); err == nil {
		t.Fatal("the stream carried on after an answer without a claim")
	}
}

// A cancel frame stops the engine mid-stream; the node still sends its
// claim for what it produced, and the stream serves the next call.
func TestServeCancelFrame(t *testing.T) {
	cfg := engine.DefaultSyntheticConfig()
	cfg.Rate, cfg.MaxTokens = 200, 100_000
	syn, err := engine.NewSynthetic(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(syn.Handler())
	defer srv.Close()
	tn := startNode(t, srv.URL+"/v1", nil)
	model := tn.Models()[0]
	s := tn.stream(t)
	r := bufio.NewReader(s)
	long := fmt.Sprintf(`{"model":%q,"stream":true,"max_tokens":50000,"messages":[{"role":"user","content":"go on"}]}`, model)
	send(t, s, "req_cancel", "/chat/completions", model, true, long)
	typ, _, err := p2p.ReadFrame(r, nil, p2p.MaxFrame)
	if err != nil || typ != p2p.FrameHeader {
		t.Fatalf("no header: %v %q", err, typ)
	}
	for chunks := 0; chunks < 5; {
		typ, _, err := p2p.ReadFrame(r, nil, p2p.MaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		if typ == p2p.FrameData {
			chunks++
		}
	}
	sent := time.Now()
	if _, err := s.Write([]byte{p2p.FrameCancel, 0}); err != nil {
		t.Fatal(err)
	}
	var tr p2p.Trailer
	for {
		typ, payload, err := p2p.ReadFrame(r, nil, p2p.MaxFrame)
		if err != nil {
			t.Fatalf("no claim after the cancel: %v", err)
		}
		if typ == p2p.FrameTrailer {
			json.Unmarshal(payload, &tr)
			break
		}
	}
	if d := time.Since(sent); d > time.Second {
		t.Fatalf("the claim came %s after the cancel", d)
	}
	if c := tr.Claim; c.CompletionTokens < 5 || c.CompletionTokens > 1000 || c.Incomplete {
		t.Fatalf("claim after a cancel: %+v (a stopped call is complete as far as it went)", c)
	}
	if err := tn.claims.Verify(tr.Claim, tr.MAC); err != nil {
		t.Fatal(err)
	}
	send(t, s, "req_after_cancel", "/chat/completions", model, false, fmt.Sprintf(`{"model":%q,"max_tokens":3,"messages":[{"role":"user","content":"hi"}]}`, model))
	if a := readAnswer(t, r, tn); a.hdr.Status != 200 || a.trailer == nil || a.trailer.Claim.RequestID != "req_after_cancel" {
		t.Fatalf("call after a cancel: %+v", a.hdr)
	}
}

// Chunks that come faster than one per StreamLinger share a write; a chunk
// that comes after a pause is never held, and none is held longer than
// StreamLinger.
func TestServeStreamLinger(t *testing.T) {
	const linger = 80 * time.Millisecond
	// Chunk i is sent at gaps[i] after the one before it.
	gaps := []time.Duration{0, 5 * time.Millisecond, 5 * time.Millisecond, 300 * time.Millisecond, 5 * time.Millisecond}
	eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/models" {
			w.Write([]byte(`{"object":"list","data":[{"id":"m","object":"model"}]}`))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i, g := range gaps {
			time.Sleep(g)
			fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w%d \"}}]}\n\n", i)
			w.(http.Flusher).Flush()
		}
		fmt.Fprint(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":5,\"total_tokens\":7}}\n\ndata: [DONE]\n\n")
	}))
	defer eng.Close()
	tn := startNode(t, eng.URL+"/v1", func(c *Config) { c.StreamLinger = linger })
	s := tn.stream(t)
	r := bufio.NewReader(s)
	start := time.Now()
	send(t, s, "req_linger", "/chat/completions", "m", true, chatBody("m", true))
	var at []time.Duration // when each content chunk arrived
	for {
		typ, _, err := p2p.ReadFrame(r, nil, p2p.MaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		if typ == p2p.FrameData {
			at = append(at, time.Since(start))
		}
		if typ == p2p.FrameTrailer {
			break
		}
	}
	if len(at) != len(gaps) {
		t.Fatalf("%d content chunks, want %d", len(at), len(gaps))
	}
	sentAt := func(i int) (d time.Duration) {
		for _, g := range gaps[:i+1] {
			d += g
		}
		return d
	}
	const slack = 35 * time.Millisecond
	// The first chunk, and the one after the 300 ms pause, leave at once.
	for _, i := range []int{0, 3} {
		if late := at[i] - sentAt(i); late > slack {
			t.Errorf("chunk %d came %s after the engine sent it; a chunk after a pause must not wait", i, late)
		}
	}
	// Chunks 1 and 2 came 5 ms apart: they lingered, together, but not
	// past StreamLinger after the first chunk's write.
	if at[2]-at[1] > 2*time.Millisecond {
		t.Errorf("chunks 1 and 2 arrived %s apart; they should share a write", at[2]-at[1])
	}
	if at[1] < at[0]+linger-slack || at[1] > at[0]+linger+slack {
		t.Errorf("chunk 1 arrived %s after chunk 0; want about StreamLinger (%s)", at[1]-at[0], linger)
	}
}

// A stream that flows for longer than ClaimEvery carries the node's claim
// for its output so far, about every ClaimEvery: estimated, incomplete,
// never more than the output before it, growing, with a MAC settlement
// takes, and remembered for the gateway's batch signature. A short call
// carries none.
func TestServeClaimsDuringStream(t *testing.T) {
	cfg := engine.DefaultSyntheticConfig()
	cfg.Rate = 200
	syn, err := engine.NewSynthetic(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(syn.Handler())
	defer srv.Close()
	const every = 100 * time.Millisecond
	tn := startNode(t, srv.URL+"/v1", func(c *Config) { c.ClaimEvery = every })
	model := tn.Models()[0]
	body := fmt.Sprintf(`{"model":%q,"stream":true,"max_tokens":120,"messages":[{"role":"user","content":"go on for a while"}]}`, model)
	start := time.Now()
	a := tn.call(t, "/chat/completions", model, true, body)
	took := time.Since(start)
	if a.trailer == nil || a.trailer.Claim.Incomplete {
		t.Fatalf("the stream did not end with a complete claim: %+v", a.trailer)
	}
	// 120 tokens at 200 tok/s take 600 ms: a claim about every 100 ms.
	if n, most := len(a.claims), int(took/every); n < 3 || n > most {
		t.Fatalf("%d claims during a %s stream, want 3 to %d", n, took, most)
	}
	prompt := engine.EstimatePrompt("/chat/completions", []byte(body))
	var prev int64
	for i, c := range a.claims {
		cl := c.Claim
		if !cl.Incomplete || !cl.Estimated || cl.PromptTokens != prompt || cl.RequestID != a.trailer.Claim.RequestID {
			t.Fatalf("claim %d: %+v", i, cl)
		}
		before := contentOf(t, a.frames[:c.after])
		want := engine.EstimateCompletion(int64(len([]rune(before))), int64(c.after))
		if cl.CompletionTokens != want || cl.CompletionTokens <= prev {
			t.Fatalf("claim %d: %d tokens after %d chunks (want %d; the one before: %d)", i, cl.CompletionTokens, c.after, want, prev)
		}
		prev = cl.CompletionTokens
		if !tn.Node.claims.known(tn.gw.ID().String(), cl.Hash()) {
			t.Fatalf("claim %d is not remembered for a batch signature", i)
		}
	}
	short := tn.call(t, "/chat/completions", model, true, // 5 tokens: 25 ms
		fmt.Sprintf(`{"model":%q,"stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`, model))
	if short.trailer == nil || len(short.claims) != 0 {
		t.Fatalf("a short stream: trailer %+v, %d claims", short.trailer, len(short.claims))
	}
}
