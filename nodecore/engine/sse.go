package engine

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// MaxSSELine is the longest line an [SSEReader] accepts.
const MaxSSELine = 4 << 20

// ErrSSELineTooLong is returned by [SSEReader.Next] for a line, or an
// event's data joined over several lines, longer than [MaxSSELine].
var ErrSSELineTooLong = errors.New("engine: event-stream line too long")

// SSEReader reads `data:` payloads from a text/event-stream. It ignores
// comments (lines starting with ':', such as the `: ping` and `: keep-alive`
// lines cloud APIs send between chunks), `id:`/`retry:` and unknown fields,
// joins multi-line data with "\n", and tolerates `data:` without a space and
// \r\n line endings. An event still open at the end of the stream is
// returned rather than dropped, to tolerate engines that omit the final
// blank line.
//
// An `error:` field (older llama.cpp servers report a failure mid-stream as
// `error: {"code":500,"message":..}`) is read like `data:`, and marks the
// event as an error: [SSEReader.Event] then returns "error", as it does for
// an event named by `event: error`.
type SSEReader struct {
	r     *bufio.Reader
	line  []byte // accumulates a line longer than the bufio buffer
	data  []byte // data of the event being read
	event string // the event's type: its `event:` field, or "error"
	has   bool   // a data field has been seen in the current event
	first bool   // the next line is the first of the stream (may carry a BOM)
	err   error  // sticky read error
}

// NewSSEReader returns a reader of r's events, with a 64 KiB buffer and
// lines up to [MaxSSELine].
func NewSSEReader(r io.Reader) *SSEReader {
	return &SSEReader{r: bufio.NewReaderSize(r, 64<<10), first: true}
}

// Next returns the next event's data payload (e.g. `{"id":..}` or
// `[DONE]`), or io.EOF at the end of the stream. The returned slice may be
// reused by the next call.
func (s *SSEReader) Next() ([]byte, error) {
	s.data = s.data[:0]
	s.has = false
	s.event = ""
	for {
		if s.err != nil {
			if s.has && s.err == io.EOF {
				s.has = false
				return s.data, nil
			}
			return nil, s.err
		}
		line, err := s.readLine()
		if err != nil {
			s.err = err
			if len(line) == 0 {
				continue
			}
		}
		if len(line) == 0 {
			if s.has {
				return s.data, nil
			}
			s.event = "" // an event without data (`event: ping`) is dropped whole
			continue
		}
		s.field(line)
		if s.err == ErrSSELineTooLong {
			return nil, s.err
		}
	}
}

// Event returns the type of the event Next last returned: "" for a plain
// data event, the value of its `event:` field, or "error" when it carried an
// `error:` field.
func (s *SSEReader) Event() string { return s.event }

// field applies one non-empty line to the event being read.
func (s *SSEReader) field(line []byte) {
	if line[0] == ':' {
		return // comment
	}
	name, value, found := bytes.Cut(line, []byte(":"))
	if found && len(value) > 0 && value[0] == ' ' {
		value = value[1:]
	}
	switch string(name) {
	case "data":
	case "error":
		s.event = "error"
	case "event":
		if s.event != "error" {
			s.event = string(value)
		}
		return
	default:
		return // id, retry and unknown fields carry nothing we use
	}
	if len(s.data)+1+len(value) > MaxSSELine {
		s.err = ErrSSELineTooLong // one event of endless data: lines must not grow memory without bound
		return
	}
	if s.has {
		s.data = append(s.data, '\n')
	}
	s.data = append(s.data, value...)
	s.has = true
}

// readLine returns the next line without its \n or \r\n. The slice is valid
// until the next call. At the end of input it returns the last partial line
// with the error.
func (s *SSEReader) readLine() ([]byte, error) {
	line, err := s.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		s.line = append(s.line[:0], line...)
		for err == bufio.ErrBufferFull {
			if len(s.line) > MaxSSELine {
				return nil, ErrSSELineTooLong
			}
			line, err = s.r.ReadSlice('\n')
			s.line = append(s.line, line...)
		}
		line = s.line
	}
	if len(line) > MaxSSELine+2 {
		return nil, ErrSSELineTooLong
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if s.first {
		s.first = false
		line = bytes.TrimPrefix(line, []byte("\ufeff"))
	}
	return line, err
}
