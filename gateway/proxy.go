package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/internal/openai"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

func newRequestID() string { return p2p.NewRequestID() }

// inference serves one OpenAI endpoint by forwarding it to a node; path is
// the upstream path ("/chat/completions").
func (g *Gateway) inference(path string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		g.calls.Add(1)
		defer g.calls.Done()
		g.metrics.inFlight.Inc()
		defer g.metrics.inFlight.Dec()
		start := time.Now()
		reqID := newRequestID()
		w.Header().Set(HeaderRequestID, reqID)
		code := g.serveInference(w, r, path, reqID)
		g.metrics.requests.WithLabelValues(path, fmt.Sprint(code)).Inc()
		g.metrics.duration.WithLabelValues(path).Observe(time.Since(start).Seconds())
	}
}

// serveInference does the work of inference and returns the status sent.
func (g *Gateway) serveInference(w http.ResponseWriter, r *http.Request, path, reqID string) int {
	start := time.Now()
	key, ok := openai.BearerKey(r)
	if !ok {
		return fail(w, http.StatusUnauthorized, "invalid_request_error", "", "invalid_api_key", "missing API key: send Authorization: Bearer <key>")
	}
	au, err := g.auth.check(r.Context(), key)
	switch {
	case errors.Is(err, errUnknownKey):
		return fail(w, http.StatusUnauthorized, "invalid_request_error", "", "invalid_api_key", "invalid API key")
	case errors.Is(err, errNodeKey):
		return fail(w, http.StatusForbidden, "permission_error", "", "key_scope", nodeKeyMessage)
	case err != nil:
		g.log.Warn("settlement unreachable for an API key check", "err", err)
		w.Header().Set("Retry-After", "2")
		return fail(w, http.StatusServiceUnavailable, "server_error", "", "settlement_unavailable", "the settlement peer cannot be reached to check the API key; retry shortly")
	}
	if !g.limits.check(w, key) {
		return http.StatusTooManyRequests
	}
	// The body must arrive within BodyTimeout; after it the deadline is
	// lifted, or net/http would take it for the client leaving mid-stream.
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Now().Add(g.cfg.BodyTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, g.cfg.MaxBody))
	if err != nil {
		// The rest of the body will not be read: the connection closes after
		// the answer. After a handler, net/http reads up to 256 KiB of an
		// unread body to reuse the connection; a deadline already passed
		// makes that read fail at once, where no deadline would leave a
		// stalled client's connection open as long as it likes.
		rc.SetReadDeadline(time.Now())
		w.Header().Set("Connection", "close")
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			return fail(w, http.StatusRequestEntityTooLarge, "invalid_request_error", "", "request_too_large",
				fmt.Sprintf("request body exceeds %d bytes", g.cfg.MaxBody))
		case isTimeout(err):
			return fail(w, http.StatusRequestTimeout, "invalid_request_error", "", "request_timeout",
				fmt.Sprintf("the request body did not arrive within %s", g.cfg.BodyTimeout))
		}
		return fail(w, http.StatusBadRequest, "invalid_request_error", "", "", "could not read the request body")
	}
	rc.SetReadDeadline(time.Time{})
	meta, err := openai.ParseMeta(body)
	if err != nil {
		var re *openai.RequestError
		errors.As(err, &re)
		return fail(w, http.StatusBadRequest, "invalid_request_error", re.Param, re.Code, re.Message)
	}
	if meta.Model == "" {
		return fail(w, http.StatusBadRequest, "invalid_request_error", "model", "missing_required_parameter", "you must provide a model parameter")
	}
	// "llama3.2:latest" and "llama3.2" are one model (Ollama's rule); the
	// network knows it by the short name. The body keeps the caller's.
	meta.Model = engine.CanonicalModel(meta.Model)
	if meta.MaxTokens > g.cfg.MaxTokens {
		param := meta.MaxTokensParam
		return fail(w, http.StatusBadRequest, "invalid_request_error", param, "invalid_value",
			fmt.Sprintf("%s is too large: %d; this gateway allows at most %d", param, meta.MaxTokens, g.cfg.MaxTokens))
	}
	if meta.Stream && path == "/embeddings" {
		return fail(w, http.StatusBadRequest, "invalid_request_error", "stream", "invalid_value", "embeddings cannot be streamed")
	}
	if !g.view.HasModel(meta.Model) {
		g.metrics.routed(decisionNoCandidate, "model_not_found")
		g.outcomes.turnedAway(meta.Model)
		return fail(w, http.StatusNotFound, "invalid_request_error", "model", "model_not_found",
			fmt.Sprintf("the model %q has no live instance on the network", meta.Model))
	}
	// Reserve the call's worst-case cost on the account's credit line.
	reserved := g.credit.estimate(g.price(meta.Model), body, meta, path == "/embeddings")
	hold, err := g.credit.reserve(r.Context(), key, au.account, reserved)
	switch {
	case errors.Is(err, errNoCredit):
		return fail(w, http.StatusPaymentRequired, "insufficient_quota", "", "insufficient_credits",
			fmt.Sprintf("your account's available credits do not cover this call (up to %s credits); top up, lower max_tokens or use another key",
				economy.FormatCredits(reserved)))
	case errors.Is(err, errUnknownKey):
		return fail(w, http.StatusUnauthorized, "invalid_request_error", "", "invalid_api_key", "invalid API key")
	case err != nil:
		w.Header().Set("Retry-After", "2")
		return fail(w, http.StatusServiceUnavailable, "server_error", "", "settlement_unavailable",
			"the settlement peer cannot be reached to reserve credit; retry shortly")
	}
	c := &forwardCall{
		g: g, w: w, r: r, id: reqID, path: path, body: body, meta: meta,
		key: key, account: au.account, grant: au.grant, hold: hold, wantUsage: meta.IncludeUsage,
		start: start, deadline: start.Add(g.cfg.MaxCallTime),
	}
	// Deferred, so even a panic on a hostile answer returns the unused
	// reservation to the credit line.
	defer func() { g.credit.settle(au.account, hold, reserved, c.spent) }()
	return c.run()
}

func fail(w http.ResponseWriter, status int, typ, param, code, msg string) int {
	openai.WriteError(w, status, typ, param, code, msg)
	return status
}

// forwardCall is one consumer call on its way to a node.
type forwardCall struct {
	g         *Gateway
	w         http.ResponseWriter
	r         *http.Request
	id        string
	path      string
	body      []byte
	meta      openai.Meta
	key       string
	account   string
	grant     *p2p.Grant
	hold      string // the credit-line hold this call spends against
	spent     int64  // what it was billed
	wantUsage bool
	start     time.Time // when the request arrived
	deadline  time.Time // MaxCallTime from the call's start, across every attempt
	answered  bool      // the first byte of an answer reached the client (firstByte)
	stream    streamID  // the id the engine's chunks carry, for the events the gateway adds

	// What the current attempt tells the routing table.
	lease   *Lease
	outcome route.Outcome
	tokens  int64         // content chunks relayed on a stream
	span    time.Duration // from the first to the last of them
}

// nodeDone frees the routing slot as soon as the node's part is over (the
// receipt's journaling must not make the node look busy).
func (c *forwardCall) nodeDone() {
	if c.lease != nil {
		c.lease.Done(c.outcome, c.tokens, c.span)
	}
}

// attemptError says why an attempt on one instance failed before the first
// byte reached the client, so another instance may be tried.
type attemptError struct {
	status int // the node's status, 0 when it never answered
	err    error
	full   bool // 429: the node is at capacity, not failing
}

// frameErr is err, or for a frame of the wrong type, an error naming it.
func frameErr(err error, typ byte) error {
	if err == nil {
		err = fmt.Errorf("unexpected frame %q", typ)
	}
	return err
}

// timedOut reports whether the attempt failed by running out of time.
func (e *attemptError) timedOut() bool { return isTimeout(e.err) }

// isTimeout reports whether err is a deadline passing: a context's, or a
// connection's or stream's I/O deadline.
func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.As(err, &ne) && ne.Timeout()
}

func (e *attemptError) Error() string { return fmt.Sprintf("status %d: %v", e.status, e.err) }

// run tries up to 1+MaxRetries failing instances and up to MaxFullTries
// full ones (route.MaxFullTries), never the same node twice.
func (c *forwardCall) run() int {
	g := c.g
	// Every attempt's lease is done by the time run returns; this only
	// matters if one ended by a panic (Done is idempotent).
	defer func() {
		if c.lease != nil {
			c.lease.Done(route.Neutral, 0, 0)
		}
	}()
	var tried []peer.ID
	var last *attemptError
	fulls := 0
	noCandidate := false
	for attempt := 0; attempt <= g.cfg.MaxRetries && fulls < route.MaxFullTries && time.Now().Before(c.deadline); attempt++ {
		node, lease, ok := g.view.Acquire(c.meta.Model, tried)
		if !ok {
			g.metrics.routed(decisionNoCandidate, g.view.NoPick(c.meta.Model))
			noCandidate = true
			break
		}
		g.metrics.routed(decisionChosen, chosenReason(last))
		tried = append(tried, node)
		c.outcome, c.tokens, c.span, c.lease = route.Success, 0, 0, lease
		status, aerr := c.attempt(node)
		if aerr != nil {
			c.outcome = route.Failure
			if aerr.full {
				c.outcome = route.Full
			}
		}
		if c.r.Context().Err() != nil && c.outcome == route.Failure {
			c.outcome = route.Neutral // the client left: says nothing of the node
		}
		c.nodeDone()
		g.metrics.attempts.WithLabelValues(c.outcome.String()).Inc()
		g.outcomes.add(node, c.meta.Model, c.outcome)
		if aerr == nil {
			return status
		}
		last = aerr
		if aerr.full {
			fulls++
			attempt-- // busy is not failing: it uses no retry
		} else {
			g.metrics.upstreamFailures.Inc()
		}
		g.log.Warn("attempt failed before the first byte; trying another instance",
			"request", c.id, "node", node.String(), "err", aerr)
		if c.r.Context().Err() != nil {
			return 499 // the client left
		}
	}
	if !noCandidate {
		g.metrics.routed(decisionGaveUp, c.gaveUp(fulls))
	}
	if last != nil && last.timedOut() {
		return fail(c.w, http.StatusGatewayTimeout, "server_error", "", "timeout",
			fmt.Sprintf("no instance of %q answered in time (tried %d; a node has %s to start answering, a call %s in all): %v",
				c.meta.Model, len(tried), g.cfg.HeaderTimeout, g.cfg.MaxCallTime, last.err))
	}
	if last == nil || last.full {
		g.outcomes.turnedAway(c.meta.Model)
		c.w.Header().Set("Retry-After", "1")
		return fail(c.w, http.StatusServiceUnavailable, "server_error", "", "no_capacity",
			fmt.Sprintf("every instance of %q is busy or unavailable; retry shortly", c.meta.Model))
	}
	return fail(c.w, http.StatusBadGateway, "server_error", "", "upstream_failed",
		fmt.Sprintf("the call failed on %d instance(s): %v", len(tried), last.err))
}

// gaveUp says why run stopped trying with candidates left: out of time,
// out of tries on full nodes, or out of retries.
func (c *forwardCall) gaveUp(fulls int) string {
	switch {
	case !time.Now().Before(c.deadline):
		return "deadline"
	case fulls >= route.MaxFullTries:
		return "full_tries_exhausted"
	}
	return "retries_exhausted"
}

// firstByte notes that the first byte of the answer reached the client:
// the call's time to first token, once.
func (c *forwardCall) firstByte() {
	if c.answered {
		return
	}
	c.answered = true
	stream := "false"
	if c.meta.Stream {
		stream = "true"
	}
	c.g.metrics.ttft.WithLabelValues(c.path, stream).Observe(time.Since(c.start).Seconds())
}

// attempt runs the call on node. A nil error means an answer (success or a
// consumer-caused error) was relayed to the client.
func (c *forwardCall) attempt(node peer.ID) (int, *attemptError) {
	g := c.g
	ctx, cancel := context.WithDeadline(c.r.Context(), earliest(time.Now().Add(g.cfg.HeaderTimeout), c.deadline))
	defer cancel()
	if err := g.cfg.Host.Find(ctx, node); err != nil {
		g.view.Unreachable(node)
		return 0, &attemptError{err: err}
	}
	var (
		s         network.Stream
		br        *bufio.Reader
		h         p2p.InferHeader
		stopReset func() bool
	)
	fresh := false // a pooled stream failed: the retry opens a new one
	for {
		st, reused, err := g.streams.get(ctx, node, time.Now(), fresh)
		if err != nil {
			return 0, &attemptError{err: err}
		}
		// Until the first byte reaches the client, a client that leaves
		// stops the node at once and pays nothing.
		stopReset = context.AfterFunc(c.r.Context(), func() { st.Reset() })
		st.SetDeadline(earliest(time.Now().Add(g.cfg.HeaderTimeout), c.deadline))
		br = p2p.GetReader(st)
		if h, err = c.request(st, br); err == nil {
			s = st
			break
		}
		stopReset()
		p2p.PutReader(br)
		st.Reset()
		if reused && ctx.Err() == nil && !isTimeout(err) {
			fresh = true
			continue // a pooled stream that died while idle says nothing of the node
		}
		return 0, &attemptError{err: err}
	}
	defer p2p.PutReader(br)
	ok := false
	defer func() {
		if !ok {
			s.Reset()
		}
	}()
	defer stopReset()
	switch {
	case h.Status == http.StatusTooManyRequests:
		g.view.observeFull(c.lease) // a lie if the view gave it room (observe.go)
		return 0, &attemptError{status: h.Status, full: true, err: errors.New("node at capacity")}
	case h.Status >= 500 || h.NodeFault:
		code, msg := readNodeError(br)
		g.view.observeRefusal(c.lease, h.Status, code) // a lie if it cannot serve a model it announced
		return 0, &attemptError{status: h.Status, err: errors.New(msg)}
	case h.Status != http.StatusOK && (h.Status < 400 || h.Status > 499):
		return 0, &attemptError{status: h.Status, err: fmt.Errorf("the node answered status %d", h.Status)}
	case h.Status != http.StatusOK:
		// The consumer's input was refused: neutral for the node, relayed as is.
		c.outcome = route.Neutral
		typ, payload, err := p2p.ReadFrame(br, nil, p2p.MaxFrame)
		if err != nil || typ != p2p.FrameData {
			return 0, &attemptError{status: h.Status, err: fmt.Errorf("error body lost: %v", err)}
		}
		ok = true
		s.Close()
		c.w.Header().Set(HeaderNode, node.String())
		c.w.Header().Set("Content-Type", "application/json")
		c.w.WriteHeader(h.Status)
		c.w.Write(payload)
		return h.Status, nil
	}
	rel := &relay{c: c, s: s, br: br, node: node, nodeID: node.String(), stopReset: stopReset, deadline: c.deadline}
	defer func() { ok = ok || rel.pooled }()
	if c.meta.Stream {
		status, aerr := rel.stream()
		ok = aerr == nil
		return status, aerr
	}
	status, aerr := rel.whole()
	ok = aerr == nil
	return status, aerr
}

// request sends the call on stream s and reads the node's answer header.
func (c *forwardCall) request(s network.Stream, br *bufio.Reader) (p2p.InferHeader, error) {
	var h p2p.InferHeader
	bw := p2p.GetWriter(s)
	defer p2p.PutWriter(bw)
	hdr, _ := json.Marshal(p2p.InferRequest{RequestID: c.id, Path: c.path, Model: c.meta.Model, Stream: c.meta.Stream,
		Grant: c.grant, Hold: c.hold})
	if err := p2p.WriteFrame(bw, p2p.FrameRequest, hdr); err != nil {
		return h, err
	}
	if err := p2p.WriteFrame(bw, p2p.FrameBody, c.body); err != nil {
		return h, err
	}
	if err := bw.Flush(); err != nil {
		return h, err
	}
	typ, payload, err := p2p.ReadFrame(br, nil, p2p.MaxFrame)
	if err != nil || typ != p2p.FrameHeader {
		return h, fmt.Errorf("no answer header: %w", frameErr(err, typ))
	}
	if err := json.Unmarshal(payload, &h); err != nil {
		return h, fmt.Errorf("bad answer header: %w", err)
	}
	return h, nil
}

// disarm stops "client left: reset the stream" and reports whether it had
// not fired; asked again, it gives the same answer.
func (rl *relay) disarm() bool {
	if rl.disarmed == 0 {
		rl.disarmed = -1
		if rl.stopReset() {
			rl.disarmed = 1
		}
	}
	return rl.disarmed == 1
}

// release ends the relay's use of the stream after the node's trailer:
// back to the pool when nothing is left to read on it, closed otherwise.
func (rl *relay) release() {
	if rl.disarm() && rl.br.Buffered() == 0 {
		rl.c.g.streams.put(rl.node, rl.s, time.Now())
		rl.pooled = true
		return
	}
	rl.s.Close()
}

// relay moves one successful answer from a node stream to the client.
type relay struct {
	c         *forwardCall
	s         network.Stream
	br        *bufio.Reader
	node      peer.ID
	nodeID    string      // node.String(), once
	stopReset func() bool // disarms "client left: reset" once bytes reach the client
	disarmed  int8        // stopReset's answer once asked: 1 it was disarmed, -1 it had fired
	deadline  time.Time   // the call's MaxCallTime
	pooled    bool        // the stream went back to the pool for another call

	rc        *http.ResponseController // the client's, once a stream writes to it
	ev        []byte                   // the SSE event being written, reused
	unflushed bool                     // events written but not yet flushed
}
