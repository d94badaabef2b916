package provider

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
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

// A stream of /tokenrouter/infer/1 carries calls one after another, as an
// HTTP/1.1 connection does: a gateway keeps a few idle streams to each node
// and reuses them, so a call costs no stream opening, protocol negotiation
// or closing on either side (together about a seventh of each side's CPU
// when every call had its own stream). A call is a request frame and a body
// frame, answered by a header, data and a trailer; only a call that ended
// with its trailer leaves the stream open for the next. While a call runs,
// a cancel frame from the gateway (its client left) stops the engine, as
// the gateway closing or resetting the stream does.

// firstRequestTimeout bounds the wait for a new stream's first request.
const firstRequestTimeout = 30 * time.Second

// streamIdleTimeout is how long a node keeps a stream with no call on it:
// longer than a gateway keeps one idle (gateway.streamIdle), so the gateway,
// which knows when it will not reuse it, closes it first.
const streamIdleTimeout = 90 * time.Second

// call is one inference call being served on a stream.
type call struct {
	n   *Node
	s   network.Stream
	r   *bufio.Reader // the stream's, kept from call to call
	w   *bufio.Writer
	req p2p.InferRequest
	gw  string // the calling gateway's peer id, encoded once a stream

	mu sync.Mutex // guards w: a stream's lingering chunks are flushed by a timer

	done bool // the call ended with its trailer: the stream may carry another

	outcome callOutcome // how it ended, for Stats (stats.go)

	start, firstData time.Time // the request, and the first chunk of its answer (metrics.go)
}

// frameRead is one frame read off a stream, or the error that ended it.
type frameRead struct {
	typ     byte
	payload []byte
	err     error
}

func (n *Node) serveInfer(parent context.Context) network.StreamHandler {
	return func(s network.Stream) {
		r := p2p.GetReader(s)
		idle := false // nothing reads r any more: it may go back to the pool
		defer func() {
			if v := recover(); v != nil {
				s.Reset()
				n.log.Error("panic serving an inference stream; the stream was reset", "panic", fmt.Sprint(v))
			}
			if idle {
				p2p.PutReader(r)
			}
		}()
		gw := s.Conn().RemotePeer().String()
		s.SetReadDeadline(time.Now().Add(firstRequestTimeout))
		var next frameRead
		next.typ, next.payload, next.err = p2p.ReadFrame(r, nil, 64<<10)
		for calls := 0; ; calls++ {
			if next.err == nil && next.typ == p2p.FrameCancel {
				// For a call that ended as its gateway gave up on it.
				next.typ, next.payload, next.err = p2p.ReadFrame(r, nil, 64<<10)
				continue
			}
			if next.err != nil || next.typ != p2p.FrameRequest {
				idle = true
				if calls > 0 && errors.Is(next.err, io.EOF) {
					s.Close() // the gateway closed an idle stream
					return
				}
				n.log.Debug("infer stream ended", "calls", calls, "err", next.err, "frame", next.typ)
				s.Reset()
				return
			}
			// pooled: 32 KiB a call was most of the node's garbage
			c := &call{n: n, s: s, r: r, gw: gw, w: p2p.GetWriter(&deadlineWriter{s: s, timeout: n.cfg.WriteTimeout})}
			watched, err := c.serve(parent, next.payload)
			p2p.PutWriter(c.w)
			if err == nil && c.done {
				next = <-watched // the slot is free while the stream waits
				continue
			}
			if err != nil {
				n.log.Debug("infer stream ended with an error", "request", c.req.RequestID, "err", err)
				s.Reset()
			} else {
				s.Close() // answered without a claim (an error): the stream ends, gently
			}
			if watched != nil {
				<-watched // the reset or close ended its read
			}
			idle = true
			return
		}
	}
}

// serve serves the call whose request header is req. Once the request's
// body is read, a watcher reads the stream for a cancel; after a call that
// ended with its trailer it hands over the next frame on watched (the
// gateway's next request, or what ended the stream), and is ended by the
// caller's reset or close otherwise. watched is nil when no watcher ran.
func (c *call) serve(parent context.Context, req []byte) (watched <-chan frameRead, err error) {
	if err := json.Unmarshal(req, &c.req); err != nil {
		return nil, fmt.Errorf("bad request header: %w", err)
	}
	if h := c.n.cfg.OnCall; h != nil {
		h(c.gw, c.req)
	}
	n := c.n
	defer n.stats.ended(c)
	c.start = time.Now()
	defer n.metrics.ended(n, c)
	if !upstreamPaths[c.req.Path] {
		return nil, c.refuse(http.StatusNotFound, "invalid_request_error", "unknown_endpoint", "this node does not serve "+c.req.Path)
	}
	// Take a slot before reading a body of up to MaxBody.
	engineModel, serves, full := n.acquire(c.req.Model, c.gw)
	if !serves {
		return nil, c.refuse(http.StatusNotFound, "invalid_request_error", "model_not_found", "this node does not serve model "+c.req.Model)
	}
	if full {
		return nil, c.refuse(http.StatusTooManyRequests, "rate_limit_error", "node_full", "the node is at capacity for "+c.req.Model)
	}
	n.markChanged()
	defer func() {
		n.release(c.req.Model, c.gw)
		n.markChanged()
	}()
	typ, body, err := p2p.ReadFrame(c.r, nil, int(n.cfg.MaxRequest))
	if err != nil || typ != p2p.FrameBody {
		return nil, fmt.Errorf("read body: %v", err)
	}
	c.s.SetReadDeadline(time.Time{})
	// What the engine will see must be what the gateway routes and bills:
	// the same model (by canonical name: the node sends the engine its own
	// id for it) and the same streaming.
	meta, err := openai.ParseMeta(body)
	// Neither refusal is the node's fault: the body is the consumer's.
	if err != nil || engine.CanonicalModel(meta.Model) != engine.CanonicalModel(c.req.Model) || meta.Stream != c.req.Stream {
		return nil, c.answer(http.StatusBadRequest, openai.ErrorJSON("invalid_request_error", "", "mismatch", "the request header does not match its body"), false)
	}
	if meta.Model != engineModel {
		if body, err = engine.WithModel(body, engineModel); err != nil {
			return nil, c.answer(http.StatusBadRequest, openai.ErrorJSON("invalid_request_error", "model", "mismatch", "the request body's model cannot be read"), false)
		}
	}

	// A cancel frame, or the gateway closing its side of the stream, means
	// "stop": the client left. Cancelling ctx stops the engine; the node
	// still sends its claim for what it produced. The watcher is the
	// stream's only reader until it hands over the frame after the call.
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	next := make(chan frameRead, 1)
	go func() {
		for {
			typ, payload, err := p2p.ReadFrame(c.r, nil, 64<<10)
			if err == nil && typ == p2p.FrameCancel {
				cancel()
				continue
			}
			if err != nil {
				cancel()
			}
			next <- frameRead{typ, payload, err}
			return
		}
	}()
	if err := c.run(ctx, body); err != nil || !c.done {
		return next, err
	}
	// The call is over; what comes next is the gateway's to send.
	c.s.SetReadDeadline(time.Now().Add(streamIdleTimeout))
	return next, nil
}

// run calls the engine and relays its answer.
func (c *call) run(ctx context.Context, body []byte) error {
	n := c.n
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
	return c.flush()
}

func (c *call) header(status int) error { return c.headerFault(status, false) }

func (c *call) headerFault(status int, nodeFault bool) error {
	c.outcome.status, c.outcome.nodeFault = status, nodeFault
	h, _ := json.Marshal(p2p.InferHeader{Status: status, Node: c.n.cfg.Host.IDString(), NodeFault: nodeFault})
	return c.write(p2p.FrameHeader, h)
}

// write buffers one frame; the stream's writes happen when the buffer
// fills or is flushed (see deadlineWriter).
func (c *call) write(typ byte, payload []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wrote(typ)
	return p2p.WriteFrame(c.w, typ, payload)
}

// flush sends what is buffered.
func (c *call) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.w.Flush()
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
	fr := &lingerFlusher{r: body, c: c, linger: c.n.cfg.StreamLinger}
	defer fr.stop()
	s := engine.NewStream(fr, engine.FillerFor(c.req.Path, true, c.req.RequestID, c.req.Model, start.Unix()))
	var first, last, nextClaim time.Time
	sent := false
	var end error
	prompt := int64(-1) // the request's estimated prompt tokens, once a claim needs it
	for {
		before := s.Chunks
		chunk, hasUsage, err := s.Next()
		if err := fr.failed(); err != nil {
			return err // the gateway is gone
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
		if s.Chunks > before && !last.Before(nextClaim) {
			if !nextClaim.IsZero() {
				if prompt < 0 {
					prompt = engine.EstimatePrompt(c.req.Path, request)
				}
				if err := c.checkpoint(prompt, s.Chars, s.Chunks); err != nil {
					return err
				}
			}
			nextClaim = last.Add(c.n.cfg.ClaimEvery)
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

// trailer sends the node's claim for this call, with its MAC for the
// settlement peer; the node remembers it to sign it again in a batch.
func (c *call) trailer(claim p2p.NodeClaim) error {
	claim, mac := c.sealed(claim)
	c.outcome.claim = claim
	t, _ := json.Marshal(p2p.Trailer{Claim: claim, MAC: mac})
	if err := c.write(p2p.FrameTrailer, t); err != nil {
		return err
	}
	if err := c.flush(); err != nil {
		return err
	}
	c.done = true
	c.report(claim, mac)
	return nil
}

// report sends the node's claim to the settlement peer on its own, with
// the grant and hold the gateway presented: the call is paid even if the
// gateway never sends its receipt. A call without a grant (an old gateway)
// is billed by receipts alone, and so is one the engine broke off: the
// gateway fails a broken answer over before its first byte, or bills what
// it delivered of a broken stream.
func (c *call) report(claim p2p.NodeClaim, mac []byte) {
	g := c.req.Grant
	if g == nil || claim.Incomplete {
		return
	}
	c.n.reporter.submit(&p2p.Receipt{
		RequestID: claim.RequestID, Model: claim.Model, Consumer: g.Account,
		Node: claim.Node, Gateway: claim.Gateway,
		PromptTokens: claim.PromptTokens, CompletionTokens: claim.CompletionTokens,
		TimeMs: time.Now().UnixMilli(), Claim: claim, NodeMAC: mac, Grant: g, Hold: c.req.Hold,
	})
}

// checkpoint sends, with the next write, the node's claim for the output
// relayed so far: estimated (the engine reports usage only at the end) and
// incomplete. The gateway keeps the latest and bills it if the stream
// breaks before the trailer (the node died, or the connection did), capped
// like any claim by what it delivered.
func (c *call) checkpoint(prompt, outChars, outChunks int64) error {
	return c.write(p2p.FrameClaim, c.seal(p2p.NodeClaim{
		PromptTokens:     prompt,
		CompletionTokens: engine.EstimateCompletion(outChars, outChunks),
		Estimated:        true,
		Incomplete:       true,
	}))
}

// seal fills in whose call a claim is for, remembers it for the gateway's
// batch signature, and returns it encoded as a Trailer with its MAC.
func (c *call) seal(claim p2p.NodeClaim) []byte {
	claim, mac := c.sealed(claim)
	t, _ := json.Marshal(p2p.Trailer{Claim: claim, MAC: mac})
	return t
}

// sealed is seal before encoding: the claim filled in, and its MAC.
func (c *call) sealed(claim p2p.NodeClaim) (p2p.NodeClaim, []byte) {
	claim.RequestID = c.req.RequestID
	claim.Model = c.req.Model
	claim.Node = c.n.cfg.Host.IDString()
	claim.Gateway = c.gw
	if h := c.n.cfg.ClaimHook; h != nil {
		h(&claim)
	}
	c.n.claims.add(claim.Gateway, claim.Hash(), time.Now())
	return claim, c.n.claimAuth.MAC(claim)
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
