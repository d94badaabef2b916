package p2p

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// Settlement operations on /tokenrouter/settle/1.
const (
	OpAuth    = "auth"    // api key -> account (with balance)
	OpAccount = "account" // api key -> account state and a grant to bill it (gateways)
	// OpAccountView reads the key's account and nothing more: no grant, and
	// the asker is not taken for a gateway. A node's key may ask it.
	OpAccountView = "account_view"
	OpPrices      = "prices"        // -> price table
	OpReceipt     = "receipt"       // receipt -> applied or duplicate
	OpReceipts    = "receipts"      // a batch of receipts -> one result each
	OpRegister    = "register_node" // node registration -> account
	OpReport      = "report"        // gateway -> outcomes it saw per instance
	OpHold        = "hold"          // gateway -> take or top up a credit-line hold on an account
	OpRelease     = "release"       // gateway -> give a hold's rest back
	OpScores      = "scores"        // -> the current health report
	// OpClaims: node -> its own claims for calls it served, each as a
	// receipt the node built from its claim and the call's grant and hold
	// (Receipts; no gateway signature) -> one result each. Settlement bills
	// a claim whose gateway sends no receipt within its claim grace.
	OpClaims = "node_claims"
)

// RPC error codes, stable for callers to switch on.
const (
	CodeUnknownKey   = "invalid_api_key"
	CodeKeyScope     = "key_scope" // a node's key, asked to pay for calls
	CodeInsufficient = "insufficient_credits"
	CodeConflict     = "conflict"
	CodeInvalid      = "invalid_request"
	CodeInternal     = "internal_error"
)

// SettleRequest is one call to the settlement peer.
type SettleRequest struct {
	Op       string            `json:"op"`
	APIKey   string            `json:"api_key,omitempty"`
	Receipt  *Receipt          `json:"receipt,omitempty"`
	Receipts []*Receipt        `json:"receipts,omitempty"` // each with its own signatures
	Batch    *ReceiptBatch     `json:"batch,omitempty"`    // receipts under batch signatures
	Register *NodeRegistration `json:"register,omitempty"`
	Reports  []OutcomeReport   `json:"reports,omitempty"`
	Hold     *HoldRequest      `json:"hold,omitempty"`
	Unserved map[string]uint32 `json:"unserved,omitempty"` // report: calls per model turned away for want of capacity
	// ClaimBatch is OpClaims' receipts in the receipt batch's binary
	// encoding (ReceiptBatch.MarshalBinary, no signatures): a tenth of
	// their JSON's cost to write and read.
	ClaimBatch []byte `json:"claim_batch,omitempty"`
}

// HoldRequest asks settlement to reserve credit on the account of the
// request's API key for the asking gateway: a new hold, or more on an
// existing one (same ID). Min is the least the gateway can use: with less
// available than Amount but at least Min, settlement holds what there is.
type HoldRequest struct {
	ID        string `json:"id"`
	Amount    int64  `json:"amount_ucr"`
	Min       int64  `json:"min_ucr"`
	ExpiresMs int64  `json:"expires_ms"`
}

// HoldInfo is a hold as settlement keeps it.
type HoldInfo struct {
	ID        string `json:"id"`
	Account   string `json:"account"`
	Amount    int64  `json:"amount_ucr"`    // held in all since it was taken
	Remaining int64  `json:"remaining_ucr"` // not yet spent by receipts
	Added     int64  `json:"added_ucr"`     // what this request added to it
	ExpiresMs int64  `json:"expires_ms"`
	Closed    bool   `json:"closed,omitempty"`
}

// OutcomeReport is what one gateway saw of one instance since its last
// report: the failures (5xx, timeouts, broken streams, refused connections)
// and neutral outcomes. Successes reach settlement as receipts.
type OutcomeReport struct {
	Node     string `json:"node"`
	Model    string `json:"model"`
	Failures uint32 `json:"failures"`
	Neutral  uint32 `json:"neutral"`
	// PassedOver counts, by why ("parked", "below_floor", "full"), the
	// calls of Model this gateway routed elsewhere or turned away while the
	// instance was in that state (sampled at each report), so its operator
	// sees why it lost calls.
	PassedOver map[string]uint32 `json:"passed_over,omitempty"`
}

// Why a gateway passed an instance over (OutcomeReport.PassedOver).
const (
	PassedParked = "parked"      // its breaker is open
	PassedFloor  = "below_floor" // measured under the 5 tok/s floor
	PassedFull   = "full"        // no spare capacity
)

// AccountInfo is an account as settlement reports it (integers in µcr).
type AccountInfo struct {
	Account        string `json:"account"`
	BalanceUcr     int64  `json:"balance_ucr"`
	EarnedUcr      int64  `json:"earned_ucr"`
	SpentUcr       int64  `json:"spent_ucr"`
	Calls          int64  `json:"calls"`
	StartingCredit int64  `json:"starting_credit_ucr"`
	HeldUcr        int64  `json:"held_ucr"`      // reserved by gateways' credit lines for calls in progress
	AvailableUcr   int64  `json:"available_ucr"` // balance not held
	// Disputes are calls of the account (as consumer, or on its nodes)
	// where a node's claim and its gateway's receipt disagreed.
	Disputes int64 `json:"disputes"`
	// UnreceiptedCalls are calls billed from the serving node's claim
	// because the account's gateway sent no receipt: that gateway gets no
	// new credit until it does.
	UnreceiptedCalls int64 `json:"unreceipted_calls"`
	// Display strings, in credits (1 credit = 1,000,000 µcr).
	Balance string `json:"balance"`
	Earned  string `json:"earned"`
	Spent   string `json:"spent"`
}

// SettleResponse answers a SettleRequest.
type SettleResponse struct {
	Error   *RPCError           `json:"error,omitempty"`
	Account *AccountInfo        `json:"account,omitempty"`
	Grant   *Grant              `json:"grant,omitempty"` // auth: lets the asking gateway bill this account
	Prices  *economy.PriceTable `json:"prices,omitempty"`
	Applied bool                `json:"applied,omitempty"` // receipt: false means it was a duplicate
	Health  *HealthReport       `json:"health,omitempty"`
	Results []ReceiptResult     `json:"results,omitempty"` // receipts: one per receipt, in order
	Hold    *HoldInfo           `json:"hold,omitempty"`
}

// ReceiptResult is settlement's answer for one receipt of a batch.
type ReceiptResult struct {
	Applied bool      `json:"applied,omitempty"` // false without Error: a duplicate of one applied
	Error   *RPCError `json:"error,omitempty"`
}

// RPCError is an error the remote side returned on purpose.
type RPCError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *RPCError) Error() string { return e.Code + ": " + e.Message }

// SettleHandler serves one settlement request from remote.
type SettleHandler func(ctx context.Context, remote peer.ID, req *SettleRequest) *SettleResponse

// ServeSettle registers handler for /tokenrouter/settle/1 on h.
func ServeSettle(h *Host, handler SettleHandler) {
	h.SetStreamHandler(ProtoSettle, func(s network.Stream) {
		defer recoverStream(s, h)
		defer s.Close()
		s.SetDeadline(time.Now().Add(30 * time.Second))
		_, payload, err := ReadFrame(bufio.NewReader(s), nil, 1<<20)
		if err != nil {
			s.Reset()
			return
		}
		var req SettleRequest
		var resp *SettleResponse
		if err := json.Unmarshal(payload, &req); err != nil {
			resp = &SettleResponse{Error: &RPCError{Code: CodeInvalid, Message: "bad request: " + err.Error()}}
		} else {
			resp = handler(context.Background(), s.Conn().RemotePeer(), &req)
		}
		out, _ := json.Marshal(resp)
		w := bufio.NewWriter(s)
		if WriteFrame(w, FrameJSON, out) != nil || w.Flush() != nil {
			s.Reset()
		}
	})
}

// CallSettle sends req to the settlement peer p and returns its answer. An
// error the peer returned on purpose comes back as *RPCError.
func (h *Host) CallSettle(ctx context.Context, p peer.ID, req *SettleRequest) (*SettleResponse, error) {
	if err := h.Find(ctx, p); err != nil {
		return nil, err
	}
	s, err := h.NewStream(ctx, p, ProtoSettle)
	if err != nil {
		return nil, fmt.Errorf("settle: open stream: %w", err)
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		s.SetDeadline(dl)
	} else {
		s.SetDeadline(time.Now().Add(30 * time.Second))
	}
	body, err := json.Marshal(req)
	if err != nil {
		s.Reset()
		return nil, err
	}
	w := bufio.NewWriter(s)
	if err := WriteFrame(w, FrameJSON, body); err != nil {
		s.Reset()
		return nil, err
	}
	if err := w.Flush(); err != nil {
		s.Reset()
		return nil, err
	}
	_, payload, err := ReadFrame(bufio.NewReader(s), nil, 4<<20)
	if err != nil {
		s.Reset()
		return nil, fmt.Errorf("settle: read answer: %w", err)
	}
	var resp SettleResponse
	if err := json.Unmarshal(payload, &resp); err != nil {
		return nil, fmt.Errorf("settle: bad answer: %w", err)
	}
	if resp.Error != nil {
		return &resp, resp.Error
	}
	return &resp, nil
}

// recoverStream turns a panic while serving a peer's stream into a reset
// stream and a logged error: no peer input may take the process down.
func recoverStream(s network.Stream, h *Host) {
	if v := recover(); v != nil {
		s.Reset()
		h.log.Error("panic serving a stream; the stream was reset", "protocol", string(s.Protocol()),
			"peer", s.Conn().RemotePeer().String(), "panic", fmt.Sprint(v))
	}
}

// ProtoReceipts carries receipt batches in their binary encoding (see
// codec.go): JSON would cost more to decode than settling them.
const ProtoReceipts = "/tokenrouter/receipts/1"

// maxReceiptFrame bounds one binary receipt batch.
const maxReceiptFrame = 8 << 20

// ServeReceipts registers handler for binary receipt batches on h.
func ServeReceipts(h *Host, handler func(ctx context.Context, remote peer.ID, b *ReceiptBatch) *SettleResponse) {
	h.SetStreamHandler(ProtoReceipts, func(s network.Stream) {
		defer recoverStream(s, h)
		defer s.Close()
		s.SetDeadline(time.Now().Add(60 * time.Second))
		_, payload, err := ReadFrame(bufio.NewReader(s), nil, maxReceiptFrame)
		if err != nil {
			s.Reset()
			return
		}
		var resp *SettleResponse
		var b ReceiptBatch
		if err := b.UnmarshalBinary(payload); err != nil {
			resp = &SettleResponse{Error: &RPCError{Code: CodeInvalid, Message: err.Error()}}
		} else {
			resp = handler(context.Background(), s.Conn().RemotePeer(), &b)
		}
		out, _ := json.Marshal(resp)
		w := bufio.NewWriter(s)
		if WriteFrame(w, FrameJSON, out) != nil || w.Flush() != nil {
			s.Reset()
		}
	})
}

// SendReceipts delivers a signed receipt batch to the settlement peer p.
func (h *Host) SendReceipts(ctx context.Context, p peer.ID, b *ReceiptBatch) (*SettleResponse, error) {
	payload, err := b.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if err := h.Find(ctx, p); err != nil {
		return nil, err
	}
	s, err := h.NewStream(ctx, p, ProtoReceipts)
	if err != nil {
		return nil, fmt.Errorf("receipts: open stream: %w", err)
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		s.SetDeadline(dl)
	}
	w := bufio.NewWriterSize(s, 64<<10)
	if err := WriteFrame(w, 'B', payload); err != nil {
		s.Reset()
		return nil, err
	}
	if err := w.Flush(); err != nil {
		s.Reset()
		return nil, err
	}
	_, reply, err := ReadFrame(bufio.NewReader(s), nil, 4<<20)
	if err != nil {
		s.Reset()
		return nil, fmt.Errorf("receipts: read answer: %w", err)
	}
	var resp SettleResponse
	if err := json.Unmarshal(reply, &resp); err != nil {
		return nil, fmt.Errorf("receipts: bad answer: %w", err)
	}
	if resp.Error != nil {
		return &resp, resp.Error
	}
	return &resp, nil
}
