package p2p

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// ErrNodeFull is a node's answer when it is at capacity: not a failure.
var ErrNodeFull = errors.New("p2p: node at capacity")

// NewRequestID returns a fresh request id, as gateways give every call.
func NewRequestID() string {
	var b [15]byte
	rand.Read(b[:])
	return "req_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// ProbeCall is one probe: the request header and OpenAI body a gateway
// would send for a consumer's call.
type ProbeCall struct {
	Request InferRequest
	Body    []byte
}

// Probe makes call on node, as a gateway makes a consumer's call, and
// reports whether it was answered in full: a 200, then a signed-off
// trailer. The settlement peer probes nodes this way, from hosts of its own
// that look like any gateway; nothing is billed for a probe.
func (h *Host) Probe(ctx context.Context, node peer.ID, call ProbeCall, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := h.Find(ctx, node); err != nil {
		return err
	}
	s, err := h.NewStream(ctx, node, ProtoInfer)
	if err != nil {
		return err
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(timeout))
	body := call.Body
	req, _ := json.Marshal(call.Request)
	w := bufio.NewWriter(s)
	if err := WriteFrame(w, FrameRequest, req); err != nil {
		s.Reset()
		return err
	}
	if err := WriteFrame(w, FrameBody, body); err != nil {
		s.Reset()
		return err
	}
	if err := w.Flush(); err != nil {
		s.Reset()
		return err
	}
	r := bufio.NewReader(s)
	typ, payload, err := ReadFrame(r, nil, MaxFrame)
	if err != nil || typ != FrameHeader {
		s.Reset()
		return fmt.Errorf("probe: no answer: %v", err)
	}
	var hdr InferHeader
	if err := json.Unmarshal(payload, &hdr); err != nil {
		s.Reset()
		return fmt.Errorf("probe: bad header: %w", err)
	}
	if hdr.Status == 429 {
		s.Reset()
		return ErrNodeFull
	}
	if hdr.Status != 200 {
		s.Reset()
		return fmt.Errorf("probe: status %d", hdr.Status)
	}
	for {
		typ, _, err := ReadFrame(r, nil, MaxFrame)
		if err != nil {
			s.Reset()
			return fmt.Errorf("probe: answer broke off: %w", err)
		}
		if typ == FrameTrailer {
			return nil
		}
	}
}
