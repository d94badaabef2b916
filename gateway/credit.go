package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tokenrouter/tokenrouter/internal/openai"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// Credit lines: before forwarding a call the gateway reserves its worst-case
// cost against a hold it took from the settlement peer on the consumer's
// account, and gives back what the call did not use. One hold serves many
// calls, so a call costs no settlement round trip; settlement never lets the
// holds of all gateways exceed an account's balance; and while settlement is
// briefly down the gateway keeps serving on what it holds.

// Errors a reservation can fail with.
var (
	errNoCredit          = errors.New("gateway: insufficient credits")
	errSettlementOffline = errors.New("gateway: settlement unreachable and no credit line left")
)

// CreditConfig sizes credit lines.
type CreditConfig struct {
	MinTopUp     int64         // the least a hold grows by, so small calls do not each top up
	TopUpFactor  int64         // a top-up covers this many calls like the one that needed it
	HoldFor      time.Duration // a hold's life; each top-up renews it
	RenewBefore  time.Duration // top up when a hold has less than this left to live
	MaxEstimated int64         // completion tokens assumed when a call sets no max_tokens
}

// DefaultCreditConfig returns the defaults.
func DefaultCreditConfig() CreditConfig {
	return CreditConfig{
		MinTopUp:     200_000,          // 0.2 credits: hundreds of small calls per round trip
		TopUpFactor:  8,                // a burst of similar calls shares one top-up
		HoldFor:      35 * time.Minute, // outlives the longest call (30 min), so a call never outlives its hold
		RenewBefore:  time.Minute,      // never spend on a hold about to expire
		MaxEstimated: 4096,             // a typical engine's default cap on completion length
	}
}

type creditLines struct {
	h        *p2p.Host
	platform peer.ID
	cfg      CreditConfig

	mu    sync.Mutex
	lines map[string]*creditLine // by account

	topUps *prometheus.CounterVec // by result; nil = not counted
}

type creditLine struct {
	mu        sync.Mutex // serialises top-ups of one account
	id        string
	amount    int64 // the hold's total at settlement, as last confirmed
	remaining int64 // what this gateway may still spend
	expires   time.Time

	// What metrics read without l.mu, which a top-up holds for a round
	// trip to settlement (publish).
	shownUntil atomic.Int64 // the hold's expiry (unix ns); 0 = no hold
	shownLeft  atomic.Int64 // remaining
}

// publish shows the line's state to metrics; l.mu is held.
func (l *creditLine) publish() {
	until := int64(0)
	if l.id != "" {
		until = l.expires.UnixNano()
	}
	l.shownUntil.Store(until)
	l.shownLeft.Store(l.remaining)
}

// open counts the lines whose hold is open at now, and what is left on them.
func (cl *creditLines) open(now time.Time) (holds int, remaining int64) {
	cl.mu.Lock()
	lines := make([]*creditLine, 0, len(cl.lines))
	for _, l := range cl.lines {
		lines = append(lines, l)
	}
	cl.mu.Unlock()
	for _, l := range lines {
		if l.shownUntil.Load() > now.UnixNano() {
			holds++
			remaining += max(l.shownLeft.Load(), 0)
		}
	}
	return holds, remaining
}

// counted counts one top-up's result.
func (cl *creditLines) counted(result string) {
	if cl.topUps != nil {
		cl.topUps.WithLabelValues(result).Inc()
	}
}

func newCreditLines(h *p2p.Host, platform peer.ID, cfg CreditConfig) *creditLines {
	return &creditLines{h: h, platform: platform, cfg: cfg, lines: map[string]*creditLine{}}
}

// estimate is a call's worst-case cost: every request byte a prompt token
// (what billing caps input at) and the full completion length asked for.
func (cl *creditLines) estimate(price economy.Price, body []byte, meta openai.Meta, embeddings bool) int64 {
	out := meta.MaxTokens
	switch {
	case embeddings:
		out = 0 // billed on input tokens only
	case out <= 0:
		out = cl.cfg.MaxEstimated
	}
	return economy.Cost(price, int64(len(body)), out)
}

// reserve sets aside amount on the account's line, topping it up from
// settlement when needed. It returns the hold id the call spends against.
func (cl *creditLines) reserve(ctx context.Context, key, account string, amount int64) (string, error) {
	cl.mu.Lock()
	l := cl.lines[account]
	if l == nil {
		l = &creditLine{}
		cl.lines[account] = l
	}
	cl.mu.Unlock()

	l.mu.Lock()
	defer l.mu.Unlock()
	defer l.publish()
	now := time.Now()
	if l.id != "" && l.remaining >= amount && now.Add(cl.cfg.RenewBefore).Before(l.expires) {
		l.remaining -= amount
		return l.id, nil
	}
	id := l.id
	if id == "" || !now.Before(l.expires) {
		id = newHoldID()
	}
	want := max(amount*cl.cfg.TopUpFactor, cl.cfg.MinTopUp)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	resp, err := cl.h.CallSettle(cctx, cl.platform, &p2p.SettleRequest{Op: p2p.OpHold, APIKey: key, Hold: &p2p.HoldRequest{
		ID: id, Amount: want, Min: amount, ExpiresMs: now.Add(cl.cfg.HoldFor).UnixMilli(),
	}})
	cancel()
	var rpcErr *p2p.RPCError
	switch {
	case errors.As(err, &rpcErr) && rpcErr.Code == p2p.CodeInsufficient:
		cl.counted("insufficient")
		return "", errNoCredit
	case errors.As(err, &rpcErr) && rpcErr.Code == p2p.CodeUnknownKey:
		cl.counted("unknown_key")
		return "", errUnknownKey
	case errors.As(err, &rpcErr) && rpcErr.Code != p2p.CodeInternal:
		// The hold is closed or not ours any more: the next call takes a new one.
		cl.counted("closed")
		l.id, l.amount, l.remaining = "", 0, 0
		return "", errSettlementOffline
	case err != nil || resp.Hold == nil:
		// Settlement is out of reach (or did not answer in time: a top-up it
		// applied is counted from its total at the next answer). Spend what
		// the line still holds.
		cl.counted("offline")
		if l.id != "" && l.remaining >= amount && now.Before(l.expires) {
			l.remaining -= amount
			return l.id, nil
		}
		return "", errSettlementOffline
	}
	cl.counted("ok")
	if resp.Hold.ID != l.id {
		l.id, l.amount, l.remaining = resp.Hold.ID, 0, 0 // a new hold: the old one's rest returns on its expiry
	}
	// Count what settlement added since the total this gateway last saw,
	// including top-ups whose answers were lost.
	l.remaining += resp.Hold.Amount - l.amount
	l.amount = resp.Hold.Amount
	l.expires = time.UnixMilli(resp.Hold.ExpiresMs)
	if l.remaining < amount {
		return "", errNoCredit
	}
	l.remaining -= amount
	return l.id, nil
}

// settle returns to the line what a call reserved on hold but did not
// spend; a reservation on a hold the line has left behind stays with that
// hold (it returns to the account when the hold expires).
func (cl *creditLines) settle(account, hold string, reserved, spent int64) {
	cl.mu.Lock()
	l := cl.lines[account]
	cl.mu.Unlock()
	if l == nil {
		return
	}
	l.mu.Lock()
	if l.id == hold {
		l.remaining += reserved - spent
		l.publish()
	}
	l.mu.Unlock()
}

// release gives every line's rest back to its account (the gateway is stopping).
func (cl *creditLines) release(ctx context.Context) {
	cl.mu.Lock()
	ids := make([]string, 0, len(cl.lines))
	for _, l := range cl.lines {
		l.mu.Lock()
		if l.id != "" {
			ids = append(ids, l.id)
		}
		l.mu.Unlock()
	}
	cl.mu.Unlock()
	for _, id := range ids {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		cl.h.CallSettle(cctx, cl.platform, &p2p.SettleRequest{Op: p2p.OpRelease, Hold: &p2p.HoldRequest{ID: id}})
		cancel()
	}
}

func newHoldID() string {
	var b [12]byte
	rand.Read(b[:])
	return "hold_" + hex.EncodeToString(b[:])
}
