package settlement

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// MaxReceiptsPerBatch bounds one receipts call.
const MaxReceiptsPerBatch = 1024

// maxRegistrationAge bounds how old a signed node registration may be.
const maxRegistrationAge = 5 * time.Minute

func rpcErr(code, msg string) *p2p.SettleResponse {
	return &p2p.SettleResponse{Error: &p2p.RPCError{Code: code, Message: msg}}
}

// handle answers one settlement request from a node or gateway.
func (s *Settlement) handle(_ context.Context, remote peer.ID, req *p2p.SettleRequest) *p2p.SettleResponse {
	switch req.Op {
	case p2p.OpAuth, p2p.OpAccount:
		if k, ok := s.led.KeyByHash(ledger.KeyHash(req.APIKey)); ok && k.Scope != ledger.ScopeAccount {
			return rpcErr(p2p.CodeKeyScope, nodeKeyMessage)
		}
		resp := s.account(req.APIKey)
		if resp.Account != nil {
			resp.Grant = s.grant(resp.Account.Account, remote)
		}
		return resp
	case p2p.OpAccountView:
		return s.account(req.APIKey)
	case p2p.OpPrices:
		t := s.cfg.Prices
		return &p2p.SettleResponse{Prices: &t}
	case p2p.OpRegister:
		return s.registerNode(remote, req.Register)
	case p2p.OpReport:
		now := time.Now()
		if s.gateways.granted(remote, now) { // only gateways serving consumers speak for demand
			s.takeReports(remote, req.Reports, now)
			s.demand.add(remote.String(), req.Unserved, s.rep, now)
		}
		return &p2p.SettleResponse{}
	case p2p.OpHold:
		return s.hold(remote, req)
	case p2p.OpRelease:
		return s.release(remote, req)
	case p2p.OpClaims:
		if len(req.ClaimBatch) > 0 {
			var b p2p.ReceiptBatch
			if err := b.UnmarshalBinary(req.ClaimBatch); err != nil {
				return rpcErr(p2p.CodeInvalid, "bad claim batch: "+err.Error())
			}
			req.Receipts = append(req.Receipts, b.Receipts...)
		}
		if len(req.Receipts) > maxClaimsPerCall {
			return rpcErr(p2p.CodeInvalid, fmt.Sprintf("at most %d claims a call", maxClaimsPerCall))
		}
		return s.handleClaims(remote, req.Receipts)
	case p2p.OpScores:
		var seq uint64
		reports := s.healthReports(&seq, time.Now())
		all := reports[0]
		for _, r := range reports[1:] {
			all.Scores = append(all.Scores, r.Scores...)
		}
		return &p2p.SettleResponse{Health: all}
	case p2p.OpReceipts:
		var outcomes []Outcome
		switch {
		case req.Batch != nil && len(req.Batch.Receipts) <= MaxReceiptsPerBatch:
			outcomes = s.ApplyReceiptBatch(remote, req.Batch)
		case req.Batch == nil && len(req.Receipts) <= MaxReceiptsPerBatch:
			outcomes = s.ApplyReceipts(remote, req.Receipts)
		default:
			return rpcErr(p2p.CodeInvalid, fmt.Sprintf("at most %d receipts a batch", MaxReceiptsPerBatch))
		}
		return receiptResults(outcomes)
	case p2p.OpReceipt:
		if req.Receipt == nil {
			return rpcErr(p2p.CodeInvalid, "receipt missing")
		}
		applied, err := s.ApplyReceipt(remote, req.Receipt)
		if err != nil {
			return receiptError(err)
		}
		return &p2p.SettleResponse{Applied: applied}
	default:
		return rpcErr(p2p.CodeInvalid, fmt.Sprintf("unknown operation %q", req.Op))
	}
}

func (s *Settlement) account(key string) *p2p.SettleResponse {
	id, err := s.led.AccountByKey(key)
	if err != nil {
		return rpcErr(p2p.CodeUnknownKey, "invalid API key")
	}
	a, err := s.led.Account(id)
	if err != nil {
		return rpcErr(p2p.CodeInternal, "account unavailable")
	}
	return &p2p.SettleResponse{Account: s.accountInfo(a)}
}

func (s *Settlement) registerNode(remote peer.ID, r *p2p.NodeRegistration) *p2p.SettleResponse {
	if r == nil {
		return rpcErr(p2p.CodeInvalid, "registration missing")
	}
	if r.Node != remote.String() {
		return rpcErr(p2p.CodeInvalid, "a node registers itself only")
	}
	if err := r.Verify(); err != nil {
		return rpcErr(p2p.CodeInvalid, "registration signature does not verify")
	}
	if age := time.Since(time.UnixMilli(r.TimeMs)); age > maxRegistrationAge || age < -maxRegistrationAge {
		return rpcErr(p2p.CodeInvalid, "registration is stale; check the node's clock")
	}
	id, err := s.led.AccountByKey(r.APIKey)
	if err != nil {
		return rpcErr(p2p.CodeUnknownKey, "invalid API key")
	}
	if err := s.led.LinkNode(r.Node, id); err != nil {
		return rpcErr(p2p.CodeInternal, "could not link node")
	}
	a, err := s.led.Account(id)
	if err != nil {
		return rpcErr(p2p.CodeInternal, "account unavailable")
	}
	s.log.Info("node linked", "node", r.Node, "account", id)
	return &p2p.SettleResponse{Account: s.accountInfo(a)}
}

// Errors from ApplyReceipt.
var (
	ErrReceiptRejected = errors.New("settlement: receipt rejected")
)

func receiptError(err error) *p2p.SettleResponse {
	switch {
	case errors.Is(err, ledger.ErrConflict):
		return rpcErr(p2p.CodeConflict, err.Error())
	case errors.Is(err, ErrReceiptRejected), errors.Is(err, p2p.ErrBadReceipt), errors.Is(err, p2p.ErrBadSignature),
		errors.Is(err, ledger.ErrInvalid), errors.Is(err, ledger.ErrUnknownAccount):
		return rpcErr(p2p.CodeInvalid, err.Error())
	default:
		return rpcErr(p2p.CodeInternal, "could not settle the receipt; retry")
	}
}

// receiptResults answers a receipts call, one result per receipt.
func receiptResults(outcomes []Outcome) *p2p.SettleResponse {
	results := make([]p2p.ReceiptResult, len(outcomes))
	for i, out := range outcomes {
		results[i].Applied = out.Applied
		if out.Err != nil {
			results[i].Error = receiptError(out.Err).Error
		}
	}
	return &p2p.SettleResponse{Results: results}
}

// handleReceipts serves binary receipt batches (/tokenrouter/receipts/1).
func (s *Settlement) handleReceipts(_ context.Context, remote peer.ID, b *p2p.ReceiptBatch) *p2p.SettleResponse {
	if len(b.Receipts) > MaxReceiptsPerBatch {
		return rpcErr(p2p.CodeInvalid, fmt.Sprintf("at most %d receipts a batch", MaxReceiptsPerBatch))
	}
	return receiptResults(s.ApplyReceiptBatch(remote, b))
}
