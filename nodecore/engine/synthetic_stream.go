package engine

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"
)

// sseWriter writes server-sent events and flushes after each one.
type sseWriter struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	buf []byte
}

// startSSE writes the event-stream headers and returns a writer.
func startSSE(w http.ResponseWriter) *sseWriter {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	return &sseWriter{w: w, rc: http.NewResponseController(w), buf: make([]byte, 0, 512)}
}

// send writes v as one `data: {json}` event and flushes it.
func (sw *sseWriter) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return sw.write(b)
}

// write writes payload as one `data:` event and flushes it.
func (sw *sseWriter) write(payload []byte) error {
	sw.buf = append(sw.buf[:0], "data: "...)
	sw.buf = append(sw.buf, payload...)
	sw.buf = append(sw.buf, "\n\n"...)
	if _, err := sw.w.Write(sw.buf); err != nil {
		return err
	}
	if err := sw.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

// done writes the terminating `data: [DONE]` event.
func (sw *sseWriter) done() error {
	return sw.write([]byte("[DONE]"))
}

// streamChat streams a chat.completion.chunk sequence: a role chunk, one
// chunk per token, a finish chunk, the usage chunk when asked, then [DONE].
func (s *Synthetic) streamChat(w http.ResponseWriter, r *http.Request, g *genRequest) {
	sw := startSSE(w)
	c := chatChunk{
		ID:                newID("chatcmpl-"),
		Object:            "chat.completion.chunk",
		Created:           time.Now().Unix(),
		Model:             g.model,
		SystemFingerprint: "synthetic",
		Choices:           make([]chatChunkChoice, 1),
	}
	if g.includeUsage {
		c.Usage = jsonNull
	}
	empty := ""
	c.Choices[0].Delta = chatDelta{Role: "assistant", Content: &empty}
	if err := sw.send(&c); err != nil {
		s.logDone(r, g, 0, err)
		return
	}
	generated, err := s.streamTokens(r, g, sw, &c, func(tok *string) {
		c.Choices[0].Delta = chatDelta{Content: tok}
	})
	if err != nil {
		s.logDone(r, g, generated, err)
		return
	}
	c.Choices[0].Delta = chatDelta{}
	c.Choices[0].FinishReason = &g.finish
	err = s.finishStream(sw, &c, g, func(u *Usage) {
		c.Choices = []chatChunkChoice{}
		c.Usage = u
	})
	s.logDone(r, g, generated, err)
}

// streamText streams a text_completion sequence: one chunk per token, a
// finish chunk, the usage chunk when asked, then [DONE].
func (s *Synthetic) streamText(w http.ResponseWriter, r *http.Request, g *genRequest) {
	sw := startSSE(w)
	c := textCompletion{
		ID:                newID("cmpl-"),
		Object:            "text_completion",
		Created:           time.Now().Unix(),
		Model:             g.model,
		SystemFingerprint: "synthetic",
		Choices:           make([]textChoice, 1),
	}
	if g.includeUsage {
		c.Usage = jsonNull
	}
	generated, err := s.streamTokens(r, g, sw, &c, func(tok *string) {
		c.Choices[0].Text = *tok
	})
	if err != nil {
		s.logDone(r, g, generated, err)
		return
	}
	c.Choices[0].Text = ""
	c.Choices[0].FinishReason = &g.finish
	err = s.finishStream(sw, &c, g, func(u *Usage) {
		c.Choices = []textChoice{}
		c.Usage = u
	})
	s.logDone(r, g, generated, err)
}

// streamTokens generates g.maxTokens tokens, paced by TTFT and Rate; for
// each it calls setTok and sends chunk. It stops at once, returning the
// context's or the write's error, when the client goes away.
func (s *Synthetic) streamTokens(r *http.Request, g *genRequest, sw *sseWriter, chunk any, setTok func(*string)) (int, error) {
	gen := newTextGen(g.model, g.prompt)
	p := pacer{ctx: r.Context(), ttft: s.cfg.TTFT, interval: s.interval}
	defer p.stop()
	for i := range g.maxTokens {
		if err := p.wait(); err != nil {
			return i, err
		}
		tok := gen.next()
		setTok(&tok)
		if err := sw.send(chunk); err != nil {
			return i, err
		}
	}
	return g.maxTokens, nil
}

// finishStream sends the finish chunk, then (when the client asked) the
// usage chunk after setUsage turns chunk into it, then [DONE].
func (s *Synthetic) finishStream(sw *sseWriter, chunk any, g *genRequest, setUsage func(*Usage)) error {
	if err := sw.send(chunk); err != nil {
		return err
	}
	if g.includeUsage {
		setUsage(g.usage(g.maxTokens))
		if err := sw.send(chunk); err != nil {
			return err
		}
	}
	return sw.done()
}
