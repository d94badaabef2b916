package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// stopGrace is how long a node gets to send its claim after the client left.
const stopGrace = 5 * time.Second

// readTrailer reads the node's claim for this call and checks that
// it is for this call.
func (rl *relay) readTrailer(payload []byte) (*p2p.Trailer, error) {
	var t p2p.Trailer
	if err := json.Unmarshal(payload, &t); err != nil {
		return nil, fmt.Errorf("bad trailer: %w", err)
	}
	c := rl.c
	cl := t.Claim
	if cl.RequestID != c.id || cl.Model != c.meta.Model || cl.Node != rl.nodeID || cl.Gateway != c.g.cfg.Host.IDString() {
		return nil, errors.New("the node's claim is for another call")
	}
	if cl.PromptTokens < 0 || cl.CompletionTokens < 0 {
		return nil, errors.New("the node's claim has negative tokens")
	}
	// The node's MAC (t.MAC) is for the settlement peer: the gateway cannot
	// check it (it does not know the key) and needs not. The trailer arrives
	// on a libp2p stream whose secure channel is authenticated to the node's
	// peer id (rl.node, the peer this gateway dialled, and cl.Node must be
	// that id), so it cannot be forged or altered in transit. Settlement
	// checks the MAC (or the node's claim-batch signature) before it pays
	// anything: a receipt whose node MAC is bad is refused there for good,
	// the gateway moves it out of its pending journal, and the node that
	// sent it loses only its own pay (TestBadClaimSignatureIsNotPaid in
	// internal/e2e).
	return &t, nil
}

// billed caps what a node claims by what the gateway can see. A token takes
// at least a byte: input is capped by the request's size, output by the
// generated text delivered (a character is at most four bytes; a chunk
// with output holds at least one token) and by the output cap when the
// call set one (openai.Meta.MaxTokens). Output an engine generates but
// never shows (hidden reasoning) is not billed.
func (rl *relay) billed(cl p2p.NodeClaim, completion int64, out delivery) (int64, int64) {
	c := rl.c
	prompt := min(cl.PromptTokens, int64(len(c.body)))
	limit := max(out.chunks, 4*out.chars)
	if c.meta.MaxTokens > 0 {
		limit = min(limit, c.meta.MaxTokens)
	}
	capped := min(completion, limit)
	if prompt < cl.PromptTokens || capped < completion {
		c.g.log.Warn("node claimed more tokens than it could have served; billing the cap",
			"request", c.id, "node", rl.node.String(), "claimed_prompt", cl.PromptTokens, "claimed_completion", cl.CompletionTokens,
			"billed_prompt", prompt, "billed_completion", capped)
	}
	return prompt, capped
}

// charge bills the node's claim t for a stream: completion tokens (already
// capped by the caller for a cut stream) within what billed() allows.
func (rl *relay) charge(t *p2p.Trailer, completion int64, out delivery) (prompt, billedCompletion, cost int64) {
	c := rl.c
	prompt, completion = rl.billed(t.Claim, completion, out)
	price := c.g.price(c.meta.Model)
	cost = economy.Cost(price, prompt, completion)
	c.bill(rl, t, prompt, completion, price, cost)
	return prompt, completion, cost
}

// delivery is the generated output that reached the client.
type delivery struct {
	chunks int64 // streamed chunks carrying output
	chars  int64 // characters of output (text, content, tool calls, reasoning)
}

// add counts one chunk or answer; it reports whether it carried output.
func (d *delivery) add(b []byte) bool {
	content, chars := engine.ChunkOutput(b)
	if !content {
		return false
	}
	d.chunks++
	d.chars += chars
	return true
}

// whole relays a non-streamed answer: body, then the node's claim. Nothing
// reaches the client until both arrived, so any failure can fail over.
func (rl *relay) whole() (int, *attemptError) {
	rl.s.SetReadDeadline(rl.deadline)
	typ, data, err := p2p.ReadFrame(rl.br, nil, p2p.MaxFrame)
	if err != nil || typ != p2p.FrameData {
		return 0, &attemptError{status: 200, err: fmt.Errorf("answer body lost: %w", frameErr(err, typ))}
	}
	typ, payload, err := p2p.ReadFrame(rl.br, nil, 1<<20)
	if err != nil || typ != p2p.FrameTrailer {
		return 0, &attemptError{status: 200, err: fmt.Errorf("claim lost: %w", frameErr(err, typ))}
	}
	t, err := rl.readTrailer(payload)
	if err != nil {
		return 0, &attemptError{status: 200, err: err}
	}
	if t.Claim.Incomplete {
		return 0, &attemptError{status: 200, err: errors.New("the node's engine broke off its answer")}
	}
	// One pass over the answer checks it is JSON and counts its output;
	// withCost then rewrites only its usage.
	answer, err := engine.ReadChunk(data)
	if err != nil {
		return 0, &attemptError{status: 200, err: fmt.Errorf("engine answer is not a JSON object: %w", err)}
	}
	rl.release()
	c := rl.c
	var shown delivery
	if answer.Content {
		shown = delivery{chunks: 1, chars: answer.Chars}
	}
	prompt, completion := rl.billed(t.Claim, t.Claim.CompletionTokens, shown)
	price := c.g.price(c.meta.Model)
	cost := economy.Cost(price, prompt, completion)
	out, err := withCost(data, prompt, completion, cost, t.Claim.Estimated)
	if err != nil {
		return 0, &attemptError{status: 200, err: fmt.Errorf("engine answer is not a JSON object: %w", err)}
	}
	// The node's part is over; the receipt is durable before the client
	// has its answer, so a crash can never serve a call it forgot to bill.
	c.nodeDone()
	c.bill(rl, t, prompt, completion, price, cost)
	h := c.w.Header()
	h.Set(HeaderNode, rl.nodeID)
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(out)))
	rl.writeDeadline()
	c.w.WriteHeader(http.StatusOK)
	c.w.Write(out)
	c.firstByte()
	return http.StatusOK, nil
}

// stream relays SSE. Until the first chunk after the header arrives nothing
// is sent to the client, so a node dying there fails over; after it, a
// failure ends the stream with an error event, and the client pays for what
// it received.
func (rl *relay) stream() (int, *attemptError) {
	c := rl.c
	g := c.g
	rl.s.SetReadDeadline(earliest(time.Now().Add(g.cfg.HeaderTimeout), rl.deadline))
	typ, payload, err := p2p.ReadFrame(rl.br, nil, p2p.MaxFrame)
	if err != nil {
		return 0, &attemptError{status: 200, err: fmt.Errorf("stream broke before its first chunk: %w", err)}
	}
	if !rl.disarm() || c.r.Context().Err() != nil {
		c.outcome = route.Neutral
		rl.s.Reset() // the node stops; nothing served, nothing billed
		return 499, nil
	}
	// The stream's write deadline was the header's; from here the gateway
	// writes to the node only to cancel, under a deadline of its own.
	rl.s.SetWriteDeadline(time.Time{})
	h := c.w.Header()
	h.Set(HeaderNode, rl.nodeID)
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no")
	c.w.WriteHeader(http.StatusOK)

	// From here the client leaving stops the node gently: a cancel frame
	// (the node cancels its engine and sends its claim), then wait a little
	// for that claim. The watch ends before the stream can go back to the
	// pool, so a cancel never reaches a later call.
	var gone atomic.Bool
	done, watchEnded := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watchEnded)
		select {
		case <-c.r.Context().Done():
			gone.Store(true)
			rl.s.SetWriteDeadline(time.Now().Add(stopGrace))
			rl.s.Write(cancelFrame)
			rl.s.SetReadDeadline(time.Now().Add(stopGrace))
		case <-done:
		}
	}()
	endWatch := sync.OnceFunc(func() { close(done); <-watchEnded })
	defer endWatch()

	var (
		out         delivery
		usage       json.RawMessage // the engine's usage object
		trailer     *p2p.Trailer
		checkpoint  *p2p.Trailer // the node's latest claim during the stream
		broken      error
		buf         []byte
		first, last time.Time
	)
	deliver := func(data []byte) {
		if gone.Load() {
			return
		}
		if c.stream.id == "" {
			c.stream.read(data)
		}
		rl.event(data)
		if out.add(data) {
			last = time.Now()
			if first.IsZero() {
				first = last
			}
		}
	}
	for {
		switch typ {
		case p2p.FrameData:
			deliver(payload)
		case p2p.FrameUsage:
			// The chunk carrying usage may carry the answer's last words
			// too: those are relayed now, the usage at the end.
			rest, u, err := splitUsage(payload)
			if err != nil {
				broken = fmt.Errorf("bad usage chunk: %w", err)
				break
			}
			usage = u
			if rest != nil {
				deliver(rest)
			}
		case p2p.FrameClaim: // the node's claim so far, billed if no trailer comes
			checkpoint, broken = rl.readTrailer(payload)
		case p2p.FrameTrailer:
			trailer, broken = rl.readTrailer(payload)
		default:
			broken = fmt.Errorf("unexpected frame %q", typ)
		}
		if trailer != nil || broken != nil {
			break
		}
		// Before a read that may wait, send what was relayed and re-arm the
		// idle deadline; frames already here go out in the same write.
		if !p2p.FrameBuffered(rl.br) {
			rl.flush()
			if !gone.Load() {
				rl.s.SetReadDeadline(earliest(time.Now().Add(g.cfg.IdleTimeout), rl.deadline))
				if gone.Load() { // the client left meanwhile: its grace, not the idle timeout
					rl.s.SetReadDeadline(time.Now().Add(stopGrace))
				}
			}
		}
		buf = payload[:0]
		if typ, payload, err = p2p.ReadFrame(rl.br, buf, p2p.MaxFrame); err != nil {
			broken = err
			break
		}
	}
	clientGone := gone.Load() || c.r.Context().Err() != nil
	c.tokens, c.span = out.chunks, last.Sub(first)
	switch {
	case clientGone:
		c.outcome = route.Neutral
	case trailer == nil || trailer.Claim.Incomplete:
		c.outcome = route.Failure
		g.metrics.upstreamFailures.Inc()
		g.log.Warn("stream broke after the first byte", "request", c.id, "node", rl.node.String(), "err", broken)
	}
	if trailer == nil {
		rl.s.Reset()
		// The node's last claim during the stream is billed, capped by the
		// output delivered; with none (the stream broke in its first
		// second), nothing can be billed that the node did not vouch for.
		if checkpoint != nil {
			cl := checkpoint.Claim
			rl.charge(checkpoint, min(cl.CompletionTokens, out.chunks), out)
		}
		if !clientGone {
			code, msg := "upstream_failed", "the serving node failed mid-stream; the answer is incomplete"
			if isTimeout(broken) {
				code, msg = "timeout", fmt.Sprintf("the serving node sent nothing for %s, or the call reached its %s limit; the answer is incomplete",
					g.cfg.IdleTimeout, g.cfg.MaxCallTime)
			}
			rl.event(errorEvent(c, code, msg))
			rl.event([]byte("[DONE]"))
		}
		rl.flush()
		return http.StatusOK, nil
	}
	endWatch()
	rl.release()
	cl := trailer.Claim
	completion := cl.CompletionTokens
	// Bill only what reached the client: a cut stream is capped by the
	// chunks delivered. A whole stream whose engine reported no usage is
	// billed on the node's estimate (docs/usage-estimation.md); billed()
	// caps every claim by the output delivered.
	if clientGone || cl.Incomplete || usage == nil && !cl.Estimated {
		completion = min(completion, out.chunks)
	}
	c.nodeDone()
	prompt, completion, cost := rl.charge(trailer, completion, out) // durable before the stream's last word
	if !clientGone {
		switch {
		case cl.Incomplete:
			rl.event(errorEvent(c, "upstream_failed", "the serving node's engine broke off mid-stream; the answer is incomplete"))
		case c.wantUsage:
			if out, err := usageChunk(c, usage, prompt, completion, cost, cl.Estimated || usage == nil); err == nil {
				rl.event(out)
			}
		}
		rl.event([]byte("[DONE]"))
	}
	rl.flush()
	return http.StatusOK, nil
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// writeDeadline bounds the next writes to the client: a client that stops
// reading loses its call instead of holding a node's slot.
func (rl *relay) writeDeadline() {
	if rl.rc == nil {
		rl.rc = http.NewResponseController(rl.c.w)
	}
	rl.rc.SetWriteDeadline(time.Now().Add(rl.c.g.cfg.WriteTimeout))
}

// event adds one SSE event (each line of data as a data: field) to those
// the next flush sends. Events written between two flushes share one write
// to the client and one write deadline: net/http would otherwise write a
// chunk of the response, and make a syscall, every 4 KiB.
func (rl *relay) event(data []byte) {
	if !rl.unflushed {
		rl.writeDeadline()
		rl.unflushed = true
	}
	b := rl.ev
	for {
		line, rest, more := bytes.Cut(data, []byte("\n"))
		b = append(b, "data: "...)
		b = append(b, line...)
		b = append(b, '\n')
		if !more {
			break
		}
		data = rest
	}
	b = append(b, '\n')
	rl.ev = b
	if len(b) >= maxPendingEvents {
		rl.c.w.Write(b)
		rl.ev = b[:0]
	}
}

// maxPendingEvents bounds the events a relay holds for its next flush.
const maxPendingEvents = 64 << 10

// flush sends the events written since the last flush.
func (rl *relay) flush() {
	if rl.unflushed {
		if len(rl.ev) > 0 {
			rl.c.w.Write(rl.ev)
			rl.ev = rl.ev[:0]
		}
		rl.rc.Flush()
		rl.unflushed = false
		rl.c.firstByte()
	}
}

// errorEvent is the one SSE event that ends a stream broken after its first
// byte: an error object and finish_reason "error", as OpenRouter sends.
func errorEvent(c *forwardCall, code, msg string) []byte {
	choice := map[string]any{"index": 0, "delta": map[string]any{}, "finish_reason": "error"}
	object := "chat.completion.chunk"
	if c.path == "/completions" {
		choice = map[string]any{"index": 0, "text": "", "finish_reason": "error"}
		object = "text_completion"
	}
	id, created := c.stream.idAt(c.id)
	b, _ := json.Marshal(map[string]any{
		"id": id, "object": object, "created": created, "model": c.meta.Model,
		"choices": []any{choice},
		"error":   map[string]any{"message": msg, "type": "server_error", "param": nil, "code": code},
	})
	return b
}

// splitUsage takes the usage out of a streamed chunk. rest is the chunk
// without usage when it also carries choices (nil otherwise).
func splitUsage(chunk []byte) (rest []byte, usage json.RawMessage, err error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(chunk, &obj); err != nil {
		return nil, nil, err
	}
	usage = takeUsage(chunk, obj)
	var choices []json.RawMessage
	if json.Unmarshal(obj["choices"], &choices) == nil && len(choices) > 0 {
		rest, err = json.Marshal(obj)
	}
	return rest, usage, err
}

// takeUsage returns the usage of the JSON object body, decoded as obj, as
// encoding/json reads it (and the node read it): the last of the keys that
// fold to "usage" ("Usage", "USAGE"), and removes every such key from obj.
// Only the billed usage then reaches the client: a Go client would read an
// engine's "Usage" left beside it as the answer's usage.
func takeUsage(body []byte, obj map[string]json.RawMessage) json.RawMessage {
	usage := obj["usage"]
	folded := false
	for k := range obj {
		if k != "usage" && strings.EqualFold(k, "usage") {
			folded = true
			delete(obj, k)
		}
	}
	delete(obj, "usage")
	if folded {
		var u struct {
			Usage json.RawMessage `json:"usage"`
		}
		if json.Unmarshal(body, &u) == nil {
			return u.Usage
		}
	}
	return usage
}

// streamID is what a stream's chunks share: the events the gateway adds
// (the usage chunk, an error event) carry the same id and created as the
// engine's chunks, as one OpenAI stream does.
type streamID struct {
	id      string
	created int64
}

// read takes id and created from a chunk the engine sent.
func (s *streamID) read(chunk []byte) {
	var v struct {
		ID      string `json:"id"`
		Created int64  `json:"created"`
	}
	if json.Unmarshal(chunk, &v) == nil {
		s.id, s.created = v.ID, v.Created
	}
}

// idAt returns the stream's id and created, or fallback and now before
// any chunk named them.
func (s *streamID) idAt(fallback string) (string, int64) {
	id, created := s.id, s.created
	if id == "" {
		id = fallback
	}
	if created == 0 {
		created = time.Now().Unix()
	}
	return id, created
}

// usageChunk is the last streamed chunk a client that asked for usage gets:
// the billed usage with cost_ucr and cost, in the engine's usage object
// when it sent one.
func usageChunk(c *forwardCall, engineUsage json.RawMessage, prompt, completion, cost int64, estimated bool) ([]byte, error) {
	object := "chat.completion.chunk"
	if c.path == "/completions" {
		object = "text_completion"
	}
	id, created := c.stream.idAt(c.id)
	base, _ := json.Marshal(map[string]any{
		"id": id, "object": object, "created": created, "model": c.meta.Model,
		"choices": []any{}, "usage": engineUsage,
	})
	return withCost(base, prompt, completion, cost, estimated)
}

// withCost returns body (a JSON object) with usage set to the billed
// numbers plus cost_ucr and cost (credits), keeping every other field. Only
// usage (and choices, when they lack fields OpenAI always sends) are
// decoded and rewritten; the rest is copied as it is. A body whose fields
// cannot be told apart without a decoder (a key given twice or written
// with escapes) is decoded and encoded whole.
func withCost(body []byte, prompt, completion, cost int64, estimated bool) ([]byte, error) {
	spans, ok := engine.FieldSpans(body, "usage", "choices")
	if !ok {
		return withCostDecoded(body, prompt, completion, cost, estimated)
	}
	var usage json.RawMessage
	if sp := spans[0]; sp[0] >= 0 {
		usage = body[sp[0]:sp[1]]
	}
	newUsage, err := billedUsage(usage, prompt, completion, cost, estimated)
	if err != nil {
		return nil, err
	}
	var newChoices json.RawMessage
	if sp := spans[1]; sp[0] >= 0 && needsFill(body[sp[0]:sp[1]]) {
		newChoices, _ = fillChoices(body[sp[0]:sp[1]]) // nil: left as sent
	}
	// Replace from the end, so earlier spans stay where they are.
	type edit struct {
		span [2]int
		with []byte
	}
	edits := []edit{{spans[0], newUsage}}
	if newChoices != nil {
		edits = append(edits, edit{spans[1], newChoices})
		if spans[1][0] > spans[0][0] {
			edits[0], edits[1] = edits[1], edits[0]
		}
	}
	out := body
	for _, e := range edits {
		if e.span[0] < 0 { // no usage at all: added as the first field
			out = engine.InsertField(out, "usage", e.with)
			continue
		}
		out = append(append(append(make([]byte, 0, len(out)-(e.span[1]-e.span[0])+len(e.with)),
			out[:e.span[0]]...), e.with...), out[e.span[1]:]...)
	}
	return out, nil
}

// withCostDecoded is withCost by decoding and encoding the whole answer.
func withCostDecoded(body []byte, prompt, completion, cost int64, estimated bool) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		return nil, err
	}
	if obj == nil {
		return nil, errors.New("the answer is null, not an object")
	}
	usage, err := billedUsage(takeUsage(body, obj), prompt, completion, cost, estimated)
	if err != nil {
		return nil, err
	}
	obj["usage"] = usage
	if ch := obj["choices"]; needsFill(ch) {
		if filled, err := fillChoices(ch); err == nil {
			obj["choices"] = filled
		}
	}
	return json.Marshal(obj)
}

// billedUsage is the engine's usage object (raw; absent or null for none)
// with the billed numbers, cost_ucr and cost.
func billedUsage(raw json.RawMessage, prompt, completion, cost int64, estimated bool) (json.RawMessage, error) {
	usage := map[string]json.RawMessage{}
	if len(raw) > 0 && !bytes.Equal(raw, []byte("null")) {
		if err := json.Unmarshal(raw, &usage); err != nil {
			return nil, err
		}
		if usage == nil {
			usage = map[string]json.RawMessage{}
		}
	}
	set := func(k string, v any) { usage[k], _ = json.Marshal(v) }
	set("prompt_tokens", prompt)
	if _, ok := usage["completion_tokens"]; ok || completion > 0 {
		set("completion_tokens", completion)
	}
	set("total_tokens", prompt+completion)
	set("cost_ucr", cost)
	set("cost", float64(cost)/economy.UcrPerCredit)
	if estimated {
		set("estimated", true)
	}
	return json.Marshal(usage)
}

// needsFill reports whether choices may lack a field fillChoices adds.
func needsFill(ch json.RawMessage) bool {
	return len(ch) > 2 && (!bytes.Contains(ch, []byte(`"logprobs"`)) ||
		bytes.Contains(ch, []byte(`"message"`)) && !bytes.Contains(ch, []byte(`"refusal"`)))
}

// fillChoices adds the fields OpenAI's answers always carry and many
// engines (Ollama, llama.cpp, vLLM, MLX) leave out: each choice's
// "logprobs" and each message's "refusal", null when absent, so strict
// clients and schema checks accept the answer.
func fillChoices(raw json.RawMessage) (json.RawMessage, error) {
	var choices []map[string]json.RawMessage
	if err := json.Unmarshal(raw, &choices); err != nil {
		return nil, err
	}
	null := json.RawMessage("null")
	for _, c := range choices {
		if c == nil {
			continue // a null choice: left as the engine sent it
		}
		if _, ok := c["logprobs"]; !ok {
			c["logprobs"] = null
		}
		if m, ok := c["message"]; ok {
			var msg map[string]json.RawMessage
			if json.Unmarshal(m, &msg) == nil && msg != nil {
				if _, ok := msg["refusal"]; !ok {
					msg["refusal"] = null
					c["message"], _ = json.Marshal(msg)
				}
			}
		}
	}
	return json.Marshal(choices)
}

// bill journals a receipt for what the consumer is charged and queues it
// for settlement. The receipt has no signature of its own: it reaches
// settlement in a ReceiptBatch, under the batch's one gateway signature (an
// Ed25519 signature a call was 14% of the gateway's CPU).
func (c *forwardCall) bill(rl *relay, t *p2p.Trailer, prompt, completion int64, price economy.Price, cost int64) {
	g := c.g
	r := &p2p.Receipt{
		RequestID: c.id, Model: c.meta.Model, Consumer: c.account,
		Node: rl.nodeID, Gateway: g.cfg.Host.IDString(),
		PromptTokens: prompt, CompletionTokens: completion,
		Price: price, CostUcr: cost, TimeMs: time.Now().UnixMilli(),
		Claim: t.Claim, NodeMAC: t.MAC, Grant: c.grant, Hold: c.hold,
	}
	c.spent = cost
	g.auth.charged(c.key, cost)
	g.metrics.tokens.WithLabelValues("prompt").Add(float64(prompt))
	g.metrics.tokens.WithLabelValues("completion").Add(float64(completion))
	g.metrics.chargedUcr.Add(float64(cost))
	if g.cfg.DropReceipts {
		return
	}
	g.settler.submit(r)
}
