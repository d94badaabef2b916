package settlement

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/internal/tick"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// MaxHoldFor bounds a hold's life: a gateway that vanishes gives its
// reserved credit back within this. It exceeds a gateway's longest call.
const MaxHoldFor = 40 * time.Minute

// Limits on holds, so no gateway can fill the ledger with them.
const (
	maxOpenHolds = 4    // per account and gateway: a line moves on, it does not multiply
	minHold      = 1000 // µcr: the smallest hold worth a record
)

// ledgerHoldID namespaces a gateway's hold ids, so gateways cannot touch
// each other's holds.
func ledgerHoldID(gateway peer.ID, id string) string { return gateway.String() + "/" + id }

// hold takes or tops up a credit-line hold for the asking gateway on the
// account of the request's API key.
func (s *Settlement) hold(remote peer.ID, req *p2p.SettleRequest) *p2p.SettleResponse {
	hr := req.Hold
	if hr == nil || hr.ID == "" || len(hr.ID) > 128 || hr.Amount <= 0 || hr.Min < 0 || hr.Min > hr.Amount {
		return rpcErr(p2p.CodeInvalid, "a hold needs an id, an amount > 0 and 0 <= min <= amount")
	}
	account, err := s.led.AccountByKey(req.APIKey)
	if err != nil {
		return rpcErr(p2p.CodeUnknownKey, "invalid API key")
	}
	if n := s.owing(account, remote); n >= maxUnreceipted {
		return rpcErr(p2p.CodeInsufficient, fmt.Sprintf(
			"this gateway served %d calls on the account without sending their receipts (its nodes' claims billed them); it gets no new credit until it sends them", n))
	}
	now := time.Now()
	expires := time.UnixMilli(hr.ExpiresMs)
	if expires.Before(now) || expires.After(now.Add(MaxHoldFor)) {
		expires = now.Add(MaxHoldFor)
	}
	id := ledgerHoldID(remote, hr.ID)
	before, existed := s.led.HoldInfo(id)
	if existed && (before.Account != account || before.Holder != remote.String()) {
		return rpcErr(p2p.CodeConflict, "that hold id belongs to another account")
	}
	if !existed {
		open := 0
		for _, h := range s.led.Holds(account) {
			if h.Holder == remote.String() && !h.Closed {
				open++
			}
		}
		if open >= maxOpenHolds {
			return rpcErr(p2p.CodeInvalid, fmt.Sprintf("this gateway already has %d open holds on the account; release one", open))
		}
	}
	amount := max(hr.Amount, minHold)
	if a, err := s.led.Account(account); err == nil && a.Available() < amount {
		amount = max(a.Available(), hr.Min) // hold what there is, if it covers the least asked
	}
	var st ledger.HoldState
	start := time.Now()
	if existed && !before.Closed {
		st, err = s.led.ExtendHold(id, amount, expires)
		s.metrics.committed("hold_topup", start, err)
	} else if !existed {
		st, err = s.led.Hold(id, account, remote.String(), amount, expires)
		s.metrics.committed("hold", start, err)
	} else {
		return rpcErr(p2p.CodeInvalid, "that hold is closed; take a new one")
	}
	switch {
	case errors.Is(err, ledger.ErrInsufficientFunds):
		return rpcErr(p2p.CodeInsufficient, "the account's available credits do not cover the hold")
	case err != nil:
		s.log.Error("hold", "err", err)
		return rpcErr(p2p.CodeInternal, "could not take the hold; retry")
	}
	added := st.Amount
	if existed {
		added = st.Amount - before.Amount
	}
	resp := s.account(req.APIKey)
	resp.Grant = s.grant(account, remote)
	resp.Hold = &p2p.HoldInfo{
		ID: hr.ID, Account: account, Amount: st.Amount, Remaining: st.Remaining, Added: added,
		ExpiresMs: st.Expires.UnixMilli(), Closed: st.Closed,
	}
	return resp
}

// release voids what is left of one of the asking gateway's holds.
func (s *Settlement) release(remote peer.ID, req *p2p.SettleRequest) *p2p.SettleResponse {
	if req.Hold == nil || req.Hold.ID == "" {
		return rpcErr(p2p.CodeInvalid, "which hold?")
	}
	id := ledgerHoldID(remote, req.Hold.ID)
	if h, ok := s.led.HoldInfo(id); !ok || h.Holder != remote.String() {
		return rpcErr(p2p.CodeInvalid, "no such hold of yours")
	}
	start := time.Now()
	_, err := s.led.VoidHold(id)
	s.metrics.committed("hold_release", start, err)
	if err != nil {
		return rpcErr(p2p.CodeInternal, "could not release the hold; it expires on its own")
	}
	return &p2p.SettleResponse{}
}

// expireLoop voids expired holds every interval until ctx ends, so a
// vanished gateway's reservations return to their accounts.
func (s *Settlement) expireLoop(ctx context.Context, every time.Duration) {
	tick.Every(ctx, every, func(now time.Time) {
		start := time.Now()
		n, err := s.led.ExpireHolds(now)
		if n > 0 || err != nil { // nothing due writes nothing
			s.metrics.committed("hold_expire", start, err)
		}
		if err != nil {
			s.log.Error("expire holds", "err", err)
		} else if n > 0 {
			s.log.Info("expired holds returned to their accounts", "holds", n)
		}
	})
}
