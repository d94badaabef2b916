package provider

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/tokenrouter/tokenrouter/internal/openai"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// upstreamPaths are the OpenAI paths a gateway may ask a node to call.
var upstreamPaths = map[string]bool{
	"/chat/completions": true,
	"/completions":      true,
	"/embeddings":       true,
}

// call is one inference call being served on a stream.
type call struct {
	n   *Node
	s   network.Stream
	w   *bufio.Writer
	req p2p.InferRequest
	gw  string // the calling gateway's peer id, encoded once
}

func (n *Node) serveInfer(parent context.Context) network.StreamHandler {
	return func(s network.Stream) {
		defer func() {
			if v := recover(); v != nil {
				s.Reset()
				n.log.Error("panic serving an inference stream; the stream was reset", "panic", fmt.Sprint(v))
			}
		}()
		// pooled: 32 KiB a call was most of the node's garbage
		c := &call{n: n, s: s, w: p2p.GetWriter(&deadlineWriter{s: s, timeout: n.cfg.WriteTimeout})}
		defer p2p.PutWriter(c.w)
		if err := c.serve(parent); err != nil {
			n.log.Debug("infer stream ended with an error", "request", c.req.RequestID, "err", err)
			s.Reset()
			return
		}
		s.Close()
	}
}

func (c *call) serve(parent context.Context) error {
	c.s.SetReadDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c.s)
	typ, payload, err := p2p.ReadFrame(r, nil, 64<<10)
	if err != nil || typ != p2p.FrameRequest {
		return fmt.Errorf("read request: %v", err)
	}
	if err := json.Unmarshal(payload, &c.req); err != nil {
		return fmt.Errorf("bad request header: %w", err)
	}
	n := c.n
	if !upstreamPaths[c.req.Path] {
		return c.refuse(http.StatusNotFound, "invalid_request_error", "unknown_endpoint", "this node does not serve "+c.req.Path)
	}
	// Take a slot before reading a body of up to MaxBody.
	c.gw = c.s.Conn().RemotePeer().String()
	gw := c.gw
	engineModel, serves, full := n.acquire(c.req.Model, gw)
	if !serves {
		return c.refuse(http.StatusNotFound, "invalid_request_error", "model_not_found", "this node does not serve model "+c.req.Model)
	}
	if full {
		return c.refuse(http.StatusTooManyRequests, "rate_limit_error", "node_full", "the node is at capacity for "+c.req.Model)
	}
	n.markChanged()
	defer func() {
		n.release(c.req.Model, gw)
		n.markChanged()
	}()
	typ, body, err := p2p.ReadFrame(r, nil, int(n.cfg.MaxRequest))
	if err != nil || typ != p2p.FrameBody {
		return fmt.Errorf("read body: %v", err)
	}
	c.s.SetReadDeadline(time.Time{})
	// What the engine will see must be what the gateway routes and bills:
	// the same model (by canonical name: the node sends the engine its own
	// id for it) and the same streaming.
	meta, err := openai.ParseMeta(body)
	// Neither refusal is the node's fault: the body is the consumer's.
	if err != nil || engine.CanonicalModel(meta.Model) != engine.CanonicalModel(c.req.Model) || meta.Stream != c.req.Stream {
		return c.answer(http.StatusBadRequest, openai.ErrorJSON("invalid_request_error", "", "mismatch", "the request header does not match its body"), false)
	}
	if meta.Model != engineModel {
		if body, err = engine.WithModel(body, engineModel); err != nil {
			return c.answer(http.StatusBadRequest, openai.ErrorJSON("invalid_request_error", "model", "mismatch", "the request body's model cannot be read"), false)
		}
	}

	// The gateway closing its side of the stream means "stop": the client
	// left. Cancelling ctx stops the engine; the node still sends its claim
	// for what it produced.
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	go func() {
		io.Copy(io.Discard, r)
		cancel()
	}()

	start := time.Now()
	resp, err := n.cfg.Upstream.Do(ctx, c.req.Path, body)
	if err != nil {
		return c.refuse(http.StatusBadGateway, "server_error", "upstream_unreachable", "the node's engine is unreachable")
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		errBody, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return c.upstreamError(engine.ParseError(resp.StatusCode, errBody))
	}
	if c.req.Stream {
		return c.relayStream(ctx, resp.Body, body, start)
	}
	return c.relayBody(resp.Body, body, start)
}

// upstreamError maps an engine's error to what the gateway needs: the
// consumer's own mistakes (400, 413, 422) are relayed in OpenAI's shape;
// an engine too busy (408, 429) makes the node full; anything else (the
// node's credentials refused, a model the engine lacks, a crash, a failure
// reported inside a stream before any output) is the node's failure, so
// the gateway tries another node.
func (c *call) upstreamError(e *engine.APIError) error {
	e = c.n.cfg.Upstream.RedactError(e) // some providers quote the key they were given
	status := e.Status
	switch {
	case e.ConsumerFault():
		return c.answer(status, e.JSON(), false)
	case status == http.StatusRequestTimeout, status == http.StatusTooManyRequests:
		return c.refuse(http.StatusTooManyRequests, "rate_limit_error", "node_full", "the node's engine is busy")
	case status >= 500:
		return c.answer(status, e.JSON(), true)
	case status == 0:
		return c.answer(http.StatusBadGateway, e.JSON(), true)
	default:
		c.n.log.Warn("engine refused a call", "status", status, "request", c.req.RequestID, "err", e.Message)
		return c.refuse(http.StatusBadGateway, "server_error", "upstream_refused", fmt.Sprintf("the node's engine answered %d", status))
	}
}

// refuse answers with the node's own OpenAI-shaped error and no claim.
// Every refusal but "full" is the node's failure, never the consumer's.
func (c *call) refuse(status int, typ, code, msg string) error {
	return c.answer(status, openai.ErrorJSON(typ, "", code, msg), status != http.StatusTooManyRequests)
}

// answer sends a status and a whole body with no claim (nothing to bill).
func (c *call) answer(status int, body []byte, nodeFault bool) error {
	if err := c.headerFault(status, nodeFault); err != nil {
		return err
	}
	if err := c.write(p2p.FrameData, body); err != nil {
		return err
	}
	return c.w.Flush()
}

func (c *call) header(status int) error { return c.headerFault(status, false) }

func (c *call) headerFault(status int, nodeFault bool) error {
	h, _ := json.Marshal(p2p.InferHeader{Status: status, Node: c.n.cfg.Host.IDString(), NodeFault: nodeFault})
	return c.write(p2p.FrameHeader, h)
}

// write buffers one frame; the stream's writes happen when the buffer
// fills or is flushed (see deadlineWriter).
func (c *call) write(typ byte, payload []byte) error {
	return p2p.WriteFrame(c.w, typ, payload)
}

// deadlineWriter bounds each write to the stream: a gateway that stops
// reading for WriteTimeout (its client stalled) loses the stream rather than
// holding the slot. The deadline is set once per write to the stream (a
// flush, or a full buffer), not once per frame buffered: a burst of chunks
// costs one deadline, and a frame that only lands in the buffer none.
type deadlineWriter struct {
	s       network.Stream
	timeout time.Duration
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.s.SetWriteDeadline(time.Now().Add(d.timeout))
	return d.s.Write(p)
}

// claimFor is what the node claims for an answer: the engine's usage, or
// when the engine reported none the estimate of engine.EstimateUsage from
// the request and the output relayed, marked Estimated.
func (c *call) claimFor(u *engine.Usage, request []byte, outChars, outChunks int64) p2p.NodeClaim {
	if u != nil {
		return p2p.NodeClaim{PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens}
	}
	e := engine.EstimateUsage(c.req.Path, request, outChars, outChunks)
	return p2p.NodeClaim{PromptTokens: e.PromptTokens, CompletionTokens: e.CompletionTokens, Estimated: true}
}

func (c *call) relayBody(body io.Reader, request []byte, start time.Time) error {
	data, err := io.ReadAll(io.LimitReader(body, c.n.cfg.MaxBody+1))
	if err != nil {
		return c.refuse(http.StatusBadGateway, "server_error", "upstream_broken", "the node's engine broke off its answer")
	}
	if int64(len(data)) > c.n.cfg.MaxBody {
		return c.refuse(http.StatusBadGateway, "server_error", "upstream_too_large", "the engine's answer is too large")
	}
	answer, err := engine.ReadChunk(data)
	if err != nil {
		return c.refuse(http.StatusBadGateway, "server_error", "upstream_bad_json", "the node's engine answered with invalid JSON")
	}
	if answer.Err != nil {
		return c.upstreamError(answer.Err) // an error answered with 200
	}
	claim := c.claimFor(answer.Usage, request, answer.Chars, 0)
	fill := engine.FillerFor(c.req.Path, false, c.req.RequestID, c.req.Model, start.Unix())
	data = fill.Fill(data, &answer)
	c.n.measure(claim.CompletionTokens, time.Since(start))
	if err := c.header(http.StatusOK); err != nil {
		return err
	}
	if err := c.write(p2p.FrameData, data); err != nil {
		return err
	}
	return c.trailer(claim)
}

// relayStream relays an engine's stream chunk by chunk. The header waits
// for the engine's first chunk, so an engine that fails before producing
// anything (vLLM reports a prompt longer than its context inside a 200
// stream) is answered like an error status: the consumer's mistake is
// relayed as one, the engine's failure lets the gateway try another node.
// A failure after the first chunk is never relayed as a chunk: the node
// ends the call Incomplete, and claims only the output it relayed.
func (c *call) relayStream(ctx context.Context, body io.Reader, request []byte, start time.Time) error {
	fr := &flushBeforeRead{r: body, w: c.w}
	s := engine.NewStream(fr, engine.FillerFor(c.req.Path, true, c.req.RequestID, c.req.Model, start.Unix()))
	var first, last time.Time
	sent := false
	var end error
	for {
		before := s.Chunks
		chunk, hasUsage, err := s.Next()
		if fr.err != nil {
			return fr.err // the gateway is gone
		}
		if err != nil {
			end = err
			break
		}
		if !sent {
			if err := c.header(http.StatusOK); err != nil {
				return err
			}
			sent = true
		}
		if s.Chunks > before { // it carried output: time the generation rate
			last = time.Now()
			if first.IsZero() {
				first = last
			}
		}
		typ := byte(p2p.FrameData)
		if hasUsage {
			typ = p2p.FrameUsage
		}
		if err := c.write(typ, chunk); err != nil {
			return err
		}
	}
	engineErr, failed := engine.IsEngineError(end)
	engineErr = c.n.cfg.Upstream.RedactError(engineErr)
	stopped := ctx.Err() != nil // the gateway asked to stop
	switch {
	case failed:
		c.n.log.Warn("engine failed mid-stream", "request", c.req.RequestID, "status", engineErr.Status, "err", engineErr.Message)
	case end != io.EOF && !stopped:
		c.n.log.Warn("engine stream broke", "request", c.req.RequestID, "err", end)
	}
	if !sent {
		switch {
		case failed:
			return c.upstreamError(engineErr)
		case stopped:
			return ctx.Err()
		case !s.Complete():
			return c.refuse(http.StatusBadGateway, "server_error", "upstream_broken", "the node's engine ended its stream before answering")
		}
		if err := c.header(http.StatusOK); err != nil { // a complete, empty answer
			return err
		}
	}
	claim := c.claimFor(s.Usage, request, s.Chars, s.Chunks)
	// An engine that failed, or ended without [DONE] and with a choice
	// unfinished, broke off, unless the gateway asked to stop.
	claim.Incomplete = failed || !s.Complete() && !stopped
	if s.Chunks > 1 {
		c.n.measure(s.Chunks-1, last.Sub(first))
	}
	return c.trailer(claim)
}

// flushBeforeRead sends what the node relayed before it waits on the
// engine for more: chunks the engine already sent go to the gateway in one
// write, and a chunk that has no successor yet leaves at once.
type flushBeforeRead struct {
	r   io.Reader
	w   *bufio.Writer
	err error // the flush that failed
}

func (f *flushBeforeRead) Read(p []byte) (int, error) {
	if f.w.Buffered() > 0 {
		if err := f.w.Flush(); err != nil {
			f.err = err
			return 0, err
		}
	}
	return f.r.Read(p)
}

// trailer sends the node's claim for this call, with its MAC for the
// settlement peer; the node remembers it to sign it again in a batch.
func (c *call) trailer(claim p2p.NodeClaim) error {
	claim.RequestID = c.req.RequestID
	claim.Model = c.req.Model
	claim.Node = c.n.cfg.Host.IDString()
	claim.Gateway = c.gw
	c.n.claims.add(claim.Gateway, claim.Hash(), time.Now())
	t, _ := json.Marshal(p2p.Trailer{Claim: claim, MAC: c.n.claimAuth.MAC(claim)})
	if err := c.write(p2p.FrameTrailer, t); err != nil {
		return err
	}
	return c.w.Flush()
}

// measure folds one call's generation rate into the node's EWMA.
func (n *Node) measure(tokens int64, d time.Duration) {
	if tokens <= 0 || d <= 0 {
		return
	}
	rate := float64(tokens) / d.Seconds()
	n.mu.Lock()
	if n.tokPerS == 0 {
		n.tokPerS = rate
	} else {
		n.tokPerS = 0.8*n.tokPerS + 0.2*rate
	}
	n.mu.Unlock()
}
