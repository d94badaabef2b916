package provider

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
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
}

func (n *Node) serveInfer(parent context.Context) network.StreamHandler {
	return func(s network.Stream) {
		defer func() {
			if v := recover(); v != nil {
				s.Reset()
				n.log.Error("panic serving an inference stream; the stream was reset", "panic", fmt.Sprint(v))
			}
		}()
		c := &call{n: n, s: s, w: bufio.NewWriterSize(s, 32<<10)}
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
	gw := c.s.Conn().RemotePeer().String()
	n.mu.Lock()
	serves := n.serves[c.req.Model]
	full := n.inFlight >= n.cfg.Capacity
	if serves && !full {
		n.inFlight++
		n.byPeer[gw]++
	}
	n.mu.Unlock()
	if !serves {
		return c.refuse(http.StatusNotFound, "invalid_request_error", "model_not_found", "this node does not serve model "+c.req.Model)
	}
	if full {
		return c.refuse(http.StatusTooManyRequests, "rate_limit_error", "node_full", "node is at capacity")
	}
	n.markChanged()
	defer func() {
		n.mu.Lock()
		n.inFlight--
		if n.byPeer[gw]--; n.byPeer[gw] <= 0 {
			delete(n.byPeer, gw)
		}
		n.mu.Unlock()
		n.markChanged()
	}()
	typ, body, err := p2p.ReadFrame(r, nil, int(n.cfg.MaxRequest))
	if err != nil || typ != p2p.FrameBody {
		return fmt.Errorf("read body: %v", err)
	}
	c.s.SetReadDeadline(time.Time{})
	// What the engine will see must be what the gateway routes and bills.
	if meta, err := openai.ParseMeta(body); err != nil || meta.Model != c.req.Model || meta.Stream != c.req.Stream {
		return c.refuse(http.StatusBadRequest, "invalid_request_error", "mismatch", "the request header does not match its body")
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
		return c.upstreamError(resp.StatusCode, errBody)
	}
	if c.req.Stream {
		return c.relayStream(ctx, resp.Body, start)
	}
	return c.relayBody(resp.Body, start)
}

// upstreamError maps an engine's error status to what the gateway needs:
// the consumer's own mistakes (400, 413, 422) are relayed as they are; an
// engine too busy (408, 429) makes the node full; anything else (the
// node's credentials refused, a model the engine lacks, a crash) is the
// node's failure, so the gateway tries another node.
func (c *call) upstreamError(status int, body []byte) error {
	switch {
	case status == http.StatusBadRequest, status == http.StatusRequestEntityTooLarge, status == http.StatusUnprocessableEntity:
		return c.answer(status, openai.NormalizeError(status, body), false)
	case status == http.StatusRequestTimeout, status == http.StatusTooManyRequests:
		return c.refuse(http.StatusTooManyRequests, "rate_limit_error", "node_full", "the node's engine is busy")
	case status >= 500:
		return c.answer(status, openai.NormalizeError(status, body), true)
	default:
		c.n.log.Warn("engine refused a call", "status", status, "request", c.req.RequestID)
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
	h, _ := json.Marshal(p2p.InferHeader{Status: status, Node: c.n.cfg.Host.ID().String(), NodeFault: nodeFault})
	return c.write(p2p.FrameHeader, h)
}

// write sends one frame; a gateway that stops reading for WriteTimeout
// (its client stalled) loses the stream rather than holding the slot.
func (c *call) write(typ byte, payload []byte) error {
	c.s.SetWriteDeadline(time.Now().Add(c.n.cfg.WriteTimeout))
	return p2p.WriteFrame(c.w, typ, payload)
}

func (c *call) relayBody(body io.Reader, start time.Time) error {
	data, err := io.ReadAll(io.LimitReader(body, c.n.cfg.MaxBody+1))
	if err != nil {
		return c.refuse(http.StatusBadGateway, "server_error", "upstream_broken", "the node's engine broke off its answer")
	}
	if int64(len(data)) > c.n.cfg.MaxBody {
		return c.refuse(http.StatusBadGateway, "server_error", "upstream_too_large", "the engine's answer is too large")
	}
	var parsed struct {
		Usage *engine.Usage `json:"usage"`
	}
	if err := json.Unmarshal(data, &parsed); err != nil {
		return c.refuse(http.StatusBadGateway, "server_error", "upstream_bad_json", "the node's engine answered with invalid JSON")
	}
	claim := p2p.NodeClaim{}
	if parsed.Usage != nil {
		claim.PromptTokens, claim.CompletionTokens = parsed.Usage.PromptTokens, parsed.Usage.CompletionTokens
	} else {
		claim.Estimated = true // no usage from the engine: bill nothing we cannot count
	}
	c.n.measure(claim.CompletionTokens, time.Since(start))
	if err := c.header(http.StatusOK); err != nil {
		return err
	}
	if err := c.write(p2p.FrameData, data); err != nil {
		return err
	}
	return c.trailer(claim)
}

func (c *call) relayStream(ctx context.Context, body io.Reader, start time.Time) error {
	if err := c.header(http.StatusOK); err != nil {
		return err
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	sse := engine.NewSSEReader(body)
	var usage *engine.Usage
	var chunks int64
	var first, last time.Time
	done := false
	for !done {
		data, err := sse.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				c.n.log.Warn("engine stream broke", "request", c.req.RequestID, "err", err)
			}
			break
		}
		if string(data) == "[DONE]" {
			done = true
			break
		}
		typ := byte(p2p.FrameData)
		if u := engine.ChunkUsage(data); u != nil {
			usage = u
			typ = p2p.FrameUsage
		}
		if engine.ChunkHasContent(data) {
			chunks++
			last = time.Now()
			if first.IsZero() {
				first = last
			}
		}
		if err := c.write(typ, data); err != nil {
			return err
		}
		if err := c.w.Flush(); err != nil {
			return err
		}
	}
	claim := p2p.NodeClaim{CompletionTokens: chunks, Estimated: true}
	if usage != nil {
		claim = p2p.NodeClaim{PromptTokens: usage.PromptTokens, CompletionTokens: usage.CompletionTokens}
	}
	// An engine that ended without [DONE] broke off, unless the gateway
	// asked to stop.
	claim.Incomplete = !done && ctx.Err() == nil
	if chunks > 1 {
		c.n.measure(chunks-1, last.Sub(first))
	}
	return c.trailer(claim)
}

// trailer signs and sends the node's claim for this call.
func (c *call) trailer(claim p2p.NodeClaim) error {
	claim.RequestID = c.req.RequestID
	claim.Model = c.req.Model
	claim.Node = c.n.cfg.Host.ID().String()
	claim.Gateway = c.s.Conn().RemotePeer().String()
	sig, err := p2p.SignClaim(c.n.cfg.Host.Key, claim)
	if err != nil {
		return err
	}
	c.n.claims.add(claim.Gateway, claim.Hash(), time.Now())
	t, _ := json.Marshal(p2p.Trailer{Claim: claim, Sig: sig})
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
