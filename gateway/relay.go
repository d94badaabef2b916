package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// stopGrace is how long a node gets to send its claim after the client left.
const stopGrace = 5 * time.Second

// readTrailer reads and checks the node's signed claim for this call.
func (rl *relay) readTrailer(payload []byte) (*p2p.Trailer, error) {
	var t p2p.Trailer
	if err := json.Unmarshal(payload, &t); err != nil {
		return nil, fmt.Errorf("bad trailer: %w", err)
	}
	c := rl.c
	cl := t.Claim
	if cl.RequestID != c.id || cl.Model != c.meta.Model || cl.Node != rl.node.String() || cl.Gateway != c.g.cfg.Host.ID().String() {
		return nil, errors.New("the node's claim is for another call")
	}
	if cl.PromptTokens < 0 || cl.CompletionTokens < 0 {
		return nil, errors.New("the node's claim has negative tokens")
	}
	return &t, nil
}

// whole relays a non-streamed answer: body, then the node's claim. Nothing
// reaches the client until both arrived, so any failure can fail over.
func (rl *relay) whole() (int, *attemptError) {
	typ, data, err := p2p.ReadFrame(rl.br, nil, p2p.MaxFrame)
	if err != nil || typ != p2p.FrameData {
		return 0, &attemptError{status: 200, err: fmt.Errorf("answer body lost: %v", err)}
	}
	typ, payload, err := p2p.ReadFrame(rl.br, nil, 1<<20)
	if err != nil || typ != p2p.FrameTrailer {
		return 0, &attemptError{status: 200, err: fmt.Errorf("claim lost: %v", err)}
	}
	t, err := rl.readTrailer(payload)
	if err != nil {
		return 0, &attemptError{status: 200, err: err}
	}
	rl.s.Close()
	c := rl.c
	price := c.g.price(c.meta.Model)
	cost := economy.Cost(price, t.Claim.PromptTokens, t.Claim.CompletionTokens)
	out, err := withCost(data, t.Claim, t.Claim.CompletionTokens, cost)
	if err != nil {
		return 0, &attemptError{status: 200, err: fmt.Errorf("engine answer is not a JSON object: %w", err)}
	}
	h := c.w.Header()
	h.Set(HeaderNode, rl.node.String())
	h.Set("Content-Type", "application/json")
	c.w.WriteHeader(http.StatusOK)
	c.w.Write(out)
	c.bill(rl, t, t.Claim.PromptTokens, t.Claim.CompletionTokens, price, cost)
	return http.StatusOK, nil
}

// stream relays SSE. Until the first chunk after the header arrives nothing
// is sent to the client, so a node dying there fails over; after it, a
// failure ends the stream with an error event.
func (rl *relay) stream() (int, *attemptError) {
	c := rl.c
	typ, payload, err := p2p.ReadFrame(rl.br, nil, p2p.MaxFrame)
	if err != nil {
		return 0, &attemptError{status: 200, err: fmt.Errorf("stream broke before its first chunk: %w", err)}
	}
	h := c.w.Header()
	h.Set(HeaderNode, rl.node.String())
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no")
	c.w.WriteHeader(http.StatusOK)
	flusher, _ := c.w.(http.Flusher)

	// The client leaving stops the node: close our side (the node cancels
	// its engine and sends its claim), then wait a little for that claim.
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-c.r.Context().Done():
			rl.s.CloseWrite()
			rl.s.SetReadDeadline(time.Now().Add(stopGrace))
		case <-done:
		}
	}()

	var (
		delivered  int64
		usageChunk []byte
		trailer    *p2p.Trailer
		broken     error
		buf        []byte
		first      time.Time
		last       time.Time
	)
	for {
		switch typ {
		case p2p.FrameData:
			if c.r.Context().Err() == nil {
				writeEvent(c.w, payload)
				if flusher != nil {
					flusher.Flush()
				}
				if engine.ChunkHasContent(payload) {
					delivered++
					last = time.Now()
					if first.IsZero() {
						first = last
					}
				}
			}
		case p2p.FrameUsage:
			usageChunk = bytes.Clone(payload)
		case p2p.FrameTrailer:
			trailer, broken = rl.readTrailer(payload)
		default:
			broken = fmt.Errorf("unexpected frame %q", typ)
		}
		if trailer != nil || broken != nil {
			break
		}
		buf = payload[:0]
		typ, payload, err = p2p.ReadFrame(rl.br, buf, p2p.MaxFrame)
		if err != nil {
			broken = err
			break
		}
	}
	clientGone := c.r.Context().Err() != nil
	c.tokens, c.span = delivered, last.Sub(first)
	switch {
	case clientGone:
		c.outcome = route.Neutral
	case trailer == nil:
		c.outcome = route.Failure
	}
	if trailer == nil {
		rl.s.Reset()
		c.g.metrics.upstreamFailures.Inc()
		c.g.log.Warn("stream broke after the first byte", "request", c.id, "node", rl.node.String(), "err", broken)
		if !clientGone {
			writeEvent(c.w, errorEvent(c, "the serving node failed mid-stream; the answer is incomplete"))
			writeEvent(c.w, []byte("[DONE]"))
			if flusher != nil {
				flusher.Flush()
			}
		}
		return http.StatusOK, nil
	}
	rl.s.Close()
	claim := trailer.Claim
	completion := claim.CompletionTokens
	if clientGone || usageChunk == nil {
		completion = min(completion, delivered) // bill only what reached the client
	}
	price := c.g.price(c.meta.Model)
	cost := economy.Cost(price, claim.PromptTokens, completion)
	if !clientGone {
		if c.wantUsage && usageChunk != nil {
			if out, err := withCost(usageChunk, claim, completion, cost); err == nil {
				writeEvent(c.w, out)
			}
		}
		writeEvent(c.w, []byte("[DONE]"))
		if flusher != nil {
			flusher.Flush()
		}
	}
	c.bill(rl, trailer, claim.PromptTokens, completion, price, cost)
	return http.StatusOK, nil
}

func writeEvent(w http.ResponseWriter, data []byte) {
	w.Write([]byte("data: "))
	w.Write(data)
	w.Write([]byte("\n\n"))
}

// errorEvent is the one SSE event that ends a stream broken after its first
// byte: an error object and finish_reason "error", as OpenRouter sends.
func errorEvent(c *forwardCall, msg string) []byte {
	choice := map[string]any{"index": 0, "delta": map[string]any{}, "finish_reason": "error"}
	object := "chat.completion.chunk"
	if c.path == "/completions" {
		choice = map[string]any{"index": 0, "text": "", "finish_reason": "error"}
		object = "text_completion"
	}
	b, _ := json.Marshal(map[string]any{
		"id": c.id, "object": object, "created": time.Now().Unix(), "model": c.meta.Model,
		"choices": []any{choice},
		"error":   map[string]any{"message": msg, "type": "server_error", "param": nil, "code": "upstream_failed"},
	})
	return b
}

// withCost returns body (a JSON object) with usage set to the billed
// numbers plus cost_ucr and cost (credits), keeping every other field.
func withCost(body []byte, claim p2p.NodeClaim, completion, cost int64) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		return nil, err
	}
	usage := map[string]json.RawMessage{}
	if raw, ok := obj["usage"]; ok && !bytes.Equal(raw, []byte("null")) {
		if err := json.Unmarshal(raw, &usage); err != nil {
			return nil, err
		}
	}
	set := func(k string, v any) { usage[k], _ = json.Marshal(v) }
	set("prompt_tokens", claim.PromptTokens)
	if _, isEmbedding := usage["completion_tokens"]; isEmbedding || completion > 0 || claim.CompletionTokens > 0 {
		set("completion_tokens", completion)
	}
	set("total_tokens", claim.PromptTokens+completion)
	set("cost_ucr", cost)
	set("cost", float64(cost)/economy.UcrPerCredit)
	if claim.Estimated {
		set("estimated", true)
	}
	obj["usage"], _ = json.Marshal(usage)
	return json.Marshal(obj)
}

// bill signs a receipt for what the consumer is charged and queues it.
func (c *forwardCall) bill(rl *relay, t *p2p.Trailer, prompt, completion int64, price economy.Price, cost int64) {
	g := c.g
	r := &p2p.Receipt{
		RequestID: c.id, Model: c.meta.Model, Consumer: c.account,
		Node: rl.node.String(), Gateway: g.cfg.Host.ID().String(),
		PromptTokens: prompt, CompletionTokens: completion,
		Price: price, CostUcr: cost, TimeMs: time.Now().UnixMilli(),
		Claim: t.Claim, NodeSig: t.Sig,
	}
	if err := r.Sign(g.cfg.Host.Key); err != nil {
		g.log.Error("cannot sign a receipt", "request", c.id, "err", err)
		return
	}
	g.auth.charged(c.key, cost)
	g.metrics.tokens.WithLabelValues("prompt").Add(float64(prompt))
	g.metrics.tokens.WithLabelValues("completion").Add(float64(completion))
	g.metrics.chargedUcr.Add(float64(cost))
	g.settler.submit(r)
}
