package p2p

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Frame types on /tokenrouter/infer/1 and /tokenrouter/settle/1. A frame is a
// type byte, a uvarint length and that many payload bytes.
const (
	FrameRequest = 'R' // gateway -> node: InferRequest (JSON)
	FrameBody    = 'B' // gateway -> node: the raw OpenAI request body
	FrameHeader  = 'H' // node -> gateway: InferHeader (JSON), always first
	FrameData    = 'D' // node -> gateway: a response body, or one SSE data payload
	FrameUsage   = 'U' // node -> gateway: the streamed chunk that carries usage
	FrameTrailer = 'T' // node -> gateway: Trailer (JSON), always last on success
	FrameClaim   = 'K' // node -> gateway: Trailer (JSON) for a stream's output so far, now and then; billed if no trailer comes
	FrameCancel  = 'C' // gateway -> node: stop the call in progress (its client left); no payload
	FrameJSON    = 'J' // settle protocol: one JSON message
)

// MaxFrame bounds any single frame; larger frames are a protocol error.
const MaxFrame = 16 << 20

// eagerAlloc is the largest frame allocated before its bytes arrive.
const eagerAlloc = 64 << 10

// ErrFrameTooLarge is returned when a peer announces a frame above the limit.
var ErrFrameTooLarge = errors.New("p2p: frame too large")

// WriteFrame writes one frame to w (the caller flushes).
func WriteFrame(w *bufio.Writer, typ byte, payload []byte) error {
	var hdr [1 + binary.MaxVarintLen64]byte
	hdr[0] = typ
	n := binary.PutUvarint(hdr[1:], uint64(len(payload)))
	if _, err := w.Write(hdr[:1+n]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// ReadFrame reads one frame from r. buf is reused when it is large enough;
// the returned payload aliases it.
func ReadFrame(r *bufio.Reader, buf []byte, max int) (typ byte, payload []byte, err error) {
	typ, err = r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return 0, nil, unexpected(err)
	}
	if n > uint64(max) {
		return 0, nil, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	if uint64(cap(buf)) >= n {
		payload = buf[:n]
	} else if n <= eagerAlloc {
		payload = make([]byte, n)
	} else {
		// A peer's length prefix is only a promise: grow with the bytes
		// that actually arrive instead of allocating it up front.
		var b bytes.Buffer
		b.Grow(eagerAlloc)
		if _, err := io.CopyN(&b, r, int64(n)); err != nil {
			return 0, nil, unexpected(err)
		}
		return typ, b.Bytes(), nil
	}
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, unexpected(err)
	}
	return typ, payload, nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// FrameBuffered reports whether r already holds a whole frame, so the next
// ReadFrame returns without waiting on the network. Relays use it to flush
// (and re-arm deadlines) only before they would block: under a burst they
// pass many frames on in one write, and a lone frame still goes at once.
func FrameBuffered(r *bufio.Reader) bool {
	n := r.Buffered()
	if n < 2 {
		return false
	}
	b, _ := r.Peek(min(n, 1+binary.MaxVarintLen64))
	size, k := binary.Uvarint(b[1:])
	if k <= 0 {
		return false
	}
	return uint64(n-1-k) >= size
}

// StreamBuffer is the read buffer of a stream's frames: large enough that
// a relay catching up on a burst of chunks reads many per call.
const StreamBuffer = 32 << 10

var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, StreamBuffer) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, StreamBuffer) }}
)

// GetReader returns a pooled reader of r with a StreamBuffer buffer. One per
// call allocated 32 KiB a call; PutReader gives it back once nothing reads
// from it any more (payloads ReadFrame returned do not alias it).
func GetReader(r io.Reader) *bufio.Reader {
	br := readers.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

// PutReader returns a reader from GetReader to the pool.
func PutReader(br *bufio.Reader) {
	br.Reset(nil)
	readers.Put(br)
}

// GetWriter returns a pooled writer to w with a StreamBuffer buffer.
func GetWriter(w io.Writer) *bufio.Writer {
	bw := writers.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

// PutWriter returns a writer from GetWriter to the pool; what it still
// buffers is dropped.
func PutWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	writers.Put(bw)
}
