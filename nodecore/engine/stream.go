package engine

import (
	"errors"
	"io"
)

// Stream reads an engine's streamed answer the way a node relays it: it
// skips what no OpenAI client could read (comments, keep-alives, payloads
// that are not JSON objects), turns an engine's in-stream error into an
// error rather than a chunk, fills the top-level fields a chunk lacks (see
// [Filler]) and counts the output ([Tally]).
//
//	s := engine.NewStream(resp.Body, engine.FillerFor(path, true, id, model, now))
//	for {
//		chunk, hasUsage, err := s.Next()
//		if err != nil { break } // io.EOF, an *APIError, or a read error
//		relay(chunk, hasUsage)
//	}
//	complete := s.Complete()
type Stream struct {
	Tally
	// Done reports that the engine sent [DONE].
	Done bool
	// Skipped counts payloads dropped because they were not JSON objects.
	Skipped int

	sse  *SSEReader
	fill Filler
}

// NewStream reads the event stream r, completing chunks with fill.
func NewStream(r io.Reader, fill Filler) *Stream {
	return &Stream{sse: NewSSEReader(r), fill: fill}
}

// Next returns the next chunk to relay and whether it carries usage. The
// chunk may alias the reader's buffer until the next call. At the end of
// the stream ([DONE], or the engine closing it) Next returns io.EOF; when
// the engine reports a failure in the stream (vLLM's {"object":"error"},
// a top-level "error" object as OpenAI, llama.cpp and OpenRouter send, or
// an `error:` line) it returns that *APIError; a broken connection returns
// the read error.
func (s *Stream) Next() (chunk []byte, hasUsage bool, err error) {
	for {
		if s.Done {
			return nil, false, io.EOF
		}
		data, err := s.sse.Next()
		if err != nil {
			return nil, false, err
		}
		if string(data) == "[DONE]" {
			s.Done = true
			return nil, false, io.EOF
		}
		if s.sse.Event() == "error" {
			return nil, false, ParseError(0, data)
		}
		c, err := ReadChunk(data)
		if err != nil {
			s.Skipped++
			continue
		}
		if c.Err != nil {
			return nil, false, c.Err
		}
		s.Add(&c)
		return s.fill.Fill(data, &c), c.Usage != nil, nil
	}
}

// Complete reports whether the answer arrived whole: the engine sent
// [DONE], or every choice ended with a finish_reason before the stream
// ended (some MLX servers never send [DONE]).
func (s *Stream) Complete() bool { return s.Done || s.Finished() }

// IsEngineError reports whether err is an engine's reported failure
// (an *APIError), and returns it.
func IsEngineError(err error) (*APIError, bool) {
	var e *APIError
	ok := errors.As(err, &e)
	return e, ok
}
