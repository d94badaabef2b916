package settlement

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/nodecore"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
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
		resp := s.account(req.APIKey)
		if resp.Account != nil {
			resp.Grant = s.grant(resp.Account.Account, remote)
		}
		return resp
	case p2p.OpPrices:
		t := s.cfg.Prices
		return &p2p.SettleResponse{Prices: &t}
	case p2p.OpRegister:
		return s.registerNode(remote, req.Register)
	case p2p.OpReport:
		s.takeReports(remote, req.Reports, time.Now())
		return &p2p.SettleResponse{}
	case p2p.OpScores:
		var seq uint64
		reports := s.healthReports(&seq, time.Now())
		all := reports[0]
		for _, r := range reports[1:] {
			all.Scores = append(all.Scores, r.Scores...)
		}
		return &p2p.SettleResponse{Health: all}
	case p2p.OpReceipts:
		if len(req.Receipts) > MaxReceiptsPerBatch {
			return rpcErr(p2p.CodeInvalid, fmt.Sprintf("at most %d receipts a batch", MaxReceiptsPerBatch))
		}
		results := make([]p2p.ReceiptResult, len(req.Receipts))
		for i, r := range req.Receipts {
			if r == nil {
				results[i].Error = &p2p.RPCError{Code: p2p.CodeInvalid, Message: "receipt missing"}
				continue
			}
			applied, err := s.ApplyReceipt(remote, r)
			results[i].Applied = applied
			if err != nil {
				results[i].Error = receiptError(err).Error
			}
		}
		return &p2p.SettleResponse{Results: results}
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
	return &p2p.SettleResponse{Account: accountInfo(a)}
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
	return &p2p.SettleResponse{Account: accountInfo(a)}
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

// ApplyReceipt checks a receipt from gateway `from` and commits its split:
// consumer -> provider (ProviderBps) and consumer -> platform (the rest,
// rounding included), in one synced ledger batch keyed by the request id.
// It returns applied=false for a replay of a receipt already applied.
//
// Until credit lines land (holds taken before forwarding), a consumer whose
// balance cannot cover the whole cost is charged what it has left: no
// balance ever goes below zero, and the split applies to what was charged.
func (s *Settlement) ApplyReceipt(from peer.ID, r *p2p.Receipt) (applied bool, err error) {
	defer func() {
		switch {
		case err == nil && applied:
			s.metrics.receipts.WithLabelValues("applied").Inc()
		case err == nil:
			s.metrics.receipts.WithLabelValues("duplicate").Inc()
		case errors.Is(err, ErrReceiptRejected), errors.Is(err, p2p.ErrBadReceipt), errors.Is(err, p2p.ErrBadSignature), errors.Is(err, ledger.ErrConflict):
			s.metrics.receipts.WithLabelValues("rejected").Inc()
			s.log.Warn("receipt rejected", "request", r.RequestID, "gateway", from.String(), "err", err)
		default:
			s.metrics.receipts.WithLabelValues("failed").Inc()
			s.log.Error("receipt not applied", "request", r.RequestID, "err", err)
		}
	}()
	if r.Gateway != from.String() {
		return false, fmt.Errorf("%w: sent by %s but signed for gateway %s", ErrReceiptRejected, from, r.Gateway)
	}
	if r.RequestID == "" {
		return false, fmt.Errorf("%w: no request id", ErrReceiptRejected)
	}
	if err := s.checkGrant(r); err != nil {
		return false, err
	}
	if err := r.Verify(); err != nil {
		return false, err
	}
	price := s.cfg.Prices.For(r.Model)
	if r.Price != price {
		return false, fmt.Errorf("%w: price %+v is not the table's %+v for %s", ErrReceiptRejected, r.Price, price, r.Model)
	}
	cost := economy.Cost(price, r.PromptTokens, r.CompletionTokens)
	if r.CostUcr != cost {
		return false, fmt.Errorf("%w: cost %d, the table says %d", ErrReceiptRejected, r.CostUcr, cost)
	}
	if _, err := s.led.Account(r.Consumer); err != nil {
		return false, fmt.Errorf("%w: consumer: %v", ErrReceiptRejected, err)
	}
	provider, ok := s.led.NodeAccount(r.Node)
	if !ok {
		provider = ledger.NodeAccountPrefix + r.Node
	}
	payload := r.SigningBytes()
	applied, err = s.led.Post(s.posting(r, payload, provider, cost))
	if errors.Is(err, ledger.ErrInsufficientFunds) {
		a, aerr := s.led.Account(r.Consumer)
		if aerr != nil {
			return false, aerr
		}
		charged := min(cost, max(a.Balance, 0))
		s.log.Warn("consumer could not cover a call; charging what is left", "request", r.RequestID, "cost", cost, "charged", charged)
		applied, err = s.led.Post(s.posting(r, payload, provider, charged))
		cost = charged
	}
	if err == nil && applied {
		s.metrics.settledUcr.Add(float64(cost))
		s.rep.Record(r.Node, r.Model, nodecore.EventSuccess, 1, time.Now())
	}
	return applied, err
}

func (s *Settlement) posting(r *p2p.Receipt, payload []byte, provider string, cost int64) ledger.Posting {
	split := economy.SplitCost(cost, s.cfg.ProviderBps)
	p := ledger.Posting{Key: "call/" + r.RequestID, Payload: payload, Consumer: r.Consumer}
	if provider != r.Consumer { // an operator using its own node pays only the platform share
		p.Transfers = append(p.Transfers, ledger.Transfer{From: r.Consumer, To: provider, Amount: split.Provider, Kind: ledger.KindCall})
	}
	p.Transfers = append(p.Transfers, ledger.Transfer{From: r.Consumer, To: ledger.AccountPlatform, Amount: split.Platform, Kind: ledger.KindCall})
	return p
}
