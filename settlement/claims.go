package settlement

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/internal/tick"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// Node claims. Every node reports its own claim for each call it served
// (p2p.OpClaims), with the grant and hold its gateway presented, so a
// gateway that never sends its receipts gets no free inference:
//
//   - receipt and claim both arrive: the receipt bills the call as always
//     (the idempotency key call/<gateway>/<request id> is the guard) and
//     the claim is dropped; a claim the gateway billed lower than claimed
//     is a dispute against the pair;
//   - only the claim arrives: after Config.ClaimGrace it bills the call
//     itself, against the consumer's hold for that gateway, and the call
//     counts as unreceipted for that account and gateway: the gateway gets
//     no new hold until its receipts come;
//   - only the receipt arrives: billed as always.
//
// A claim can only charge the account of the grant the gateway presented
// (the grant names the gateway and is signed by this peer), so a node can
// never bill a consumer no gateway sent it.

// claimBook is what the settlement peer knows of node claims: the ones
// waiting for their receipt, the calls billed from a claim alone, and the
// disputes. Every entry is also a side record in the ledger's store, so a
// restart forgets none.
type claimBook struct {
	mu       sync.Mutex
	pending  map[string]*pendingClaim // gateway/request id -> the node's claim, waiting for the receipt
	unrec    map[string]unreceipted   // gateway/request id -> billed from the claim alone
	owing    map[string]int           // account/gateway -> its unreceipted calls
	disputes map[string]int64         // node/<id>, gateway/<id>, account/<id> -> disputes
	billing  map[string]bool          // gateway/request id -> its claim is being billed now
	late     map[string]bool          // billing keys whose receipt came meanwhile: settled, not unreceipted
	dmu      sync.Mutex               // orders the writes of dispute counts
}

// unreceipted is a call billed from its node's claim alone.
type unreceipted struct {
	account string
	at      time.Time
}

// Unreceipted calls stop a gateway's new holds on the account once there
// are maxUnreceipted of them within unreceiptedFor: a call or two a day
// can be billed from a claim by accident (a trailer in flight when the
// gateway's deadline ran out, an answer the gateway could not read), and
// must not lock an honest gateway out for good.
const (
	maxUnreceipted = 3
	unreceiptedFor = 24 * time.Hour
)

type pendingClaim struct {
	R  *p2p.Receipt `json:"r"`  // the node's claim as a receipt (tokens are the claim's)
	At time.Time    `json:"at"` // when it arrived
}

// Side record prefixes (settlement/ledger.PutSide).
const (
	sideClaim   = "claim/"   // claim/<gateway>/<request id> -> pendingClaim
	sideUnrec   = "unrec/"   // unrec/<gateway>/<request id> -> consumer account
	sideDispute = "dispute/" // dispute/<kind>/<id> -> count
)

// claimPayloadDomain marks the payload of a posting billed from a node's
// claim, so a receipt for the same call (another payload under the same
// idempotency key) is told apart from a replay.
const claimPayloadDomain = "tokenrouter/claim-billed/1\n"

// maxClaimsPerCall bounds one OpClaims call (a settle frame is 1 MiB).
const maxClaimsPerCall = 500

func newClaimBook() *claimBook {
	return &claimBook{pending: map[string]*pendingClaim{}, unrec: map[string]unreceipted{}, owing: map[string]int{},
		disputes: map[string]int64{}, billing: map[string]bool{}, late: map[string]bool{}}
}

func callKey(gateway, requestID string) string { return gateway + "/" + requestID }

// loadClaims reads the side records a previous run left.
func (s *Settlement) loadClaims() error {
	b := s.book
	err := s.led.ScanSide(sideClaim, func(k string, v []byte) error {
		var pc pendingClaim
		if json.Unmarshal(v, &pc) != nil || pc.R == nil {
			return nil // a record this version cannot read is skipped, not fatal
		}
		b.pending[k] = &pc
		return nil
	})
	if err != nil {
		return err
	}
	err = s.led.ScanSide(sideUnrec, func(k string, v []byte) error {
		gw, _, _ := strings.Cut(k, "/")
		account, ms, _ := strings.Cut(string(v), "\t")
		at := time.Now()
		if n, err := strconv.ParseInt(ms, 10, 64); err == nil {
			at = time.UnixMilli(n)
		}
		b.unrec[k] = unreceipted{account, at}
		b.owing[account+"/"+gw]++
		return nil
	})
	if err != nil {
		return err
	}
	return s.led.ScanSide(sideDispute, func(k string, v []byte) error {
		n, _ := strconv.ParseInt(string(v), 10, 64)
		b.disputes[k] = n
		return nil
	})
}

// handleClaims takes a node's reports of its own claims (OpClaims). A
// report is acknowledged once it is durable (or its call is settled).
func (s *Settlement) handleClaims(remote peer.ID, rs []*p2p.Receipt) *p2p.SettleResponse {
	results := make([]p2p.ReceiptResult, len(rs))
	fresh := map[string][]byte{}
	keys := make([]string, len(rs))
	now := time.Now()
	for i, r := range rs {
		if err := s.checkClaim(remote, r); err != nil {
			results[i].Error = &p2p.RPCError{Code: p2p.CodeInvalid, Message: err.Error()}
			s.metrics.claims.WithLabelValues("refused").Inc()
			s.log.Warn("node claim refused", "node", remote.String(), "err", err)
			continue
		}
		if s.prober.isProbe(r.Consumer) {
			s.metrics.claims.WithLabelValues("probe").Inc() // our own probe: billed to no one
			continue
		}
		k := callKey(r.Gateway, r.RequestID)
		keys[i] = k
		s.book.mu.Lock()
		_, waiting := s.book.pending[k]
		_, billed := s.book.unrec[k]
		s.book.mu.Unlock()
		if waiting || billed {
			continue
		}
		posted, err := s.led.Posted("call/" + k)
		if err != nil {
			results[i].Error = &p2p.RPCError{Code: p2p.CodeInternal, Message: "retry"}
			keys[i] = ""
			continue
		}
		if posted {
			s.metrics.claims.WithLabelValues("matched").Inc() // its receipt came first
			continue
		}
		v, _ := json.Marshal(pendingClaim{R: r, At: now})
		fresh[k] = v
	}
	if len(fresh) > 0 {
		kvs := make(map[string][]byte, len(fresh))
		for k, v := range fresh {
			kvs[sideClaim+k] = v
		}
		if err := s.led.PutSide(kvs); err != nil {
			s.log.Error("node claims not stored", "err", err)
			return rpcErr(p2p.CodeInternal, "could not store the claims; retry")
		}
		s.book.mu.Lock()
		for i, r := range rs {
			if k := keys[i]; k != "" && fresh[k] != nil && s.book.pending[k] == nil {
				s.book.pending[k] = &pendingClaim{R: r, At: now}
			}
		}
		s.book.mu.Unlock()
		s.metrics.claims.WithLabelValues("pending").Add(float64(len(fresh)))
	}
	return &p2p.SettleResponse{Results: results}
}

// checkClaim validates a node's report of one of its claims: from the node
// itself, MAC'd by it, for an account whose grant names the claim's gateway.
func (s *Settlement) checkClaim(from peer.ID, r *p2p.Receipt) error {
	switch {
	case r == nil:
		return errors.New("claim missing")
	case r.Node != from.String() || r.Claim.Node != r.Node:
		return fmt.Errorf("a claim of node %s sent by %s", r.Node, from)
	case r.RequestID == "" || r.Claim.RequestID != r.RequestID || r.Claim.Gateway != r.Gateway || r.Claim.Model != r.Model:
		return errors.New("the claim does not match its call")
	case r.Claim.PromptTokens < 0 || r.Claim.CompletionTokens < 0:
		return errors.New("negative tokens")
	case r.Grant == nil:
		return errors.New("no grant: a node can only bill a call a gateway sent it")
	}
	if err := s.checkGrant(r); err != nil {
		return err
	}
	return s.claims.Verify(r.Claim, r.NodeMAC)
}

// receiptSettled is told of a receipt the ledger applied, or found applied
// already (a replay): the node's claim waiting for it is dropped, and, the
// first time only, a claim higher than the gateway billed is a dispute
// against the pair.
func (s *Settlement) receiptSettled(r *p2p.Receipt, applied bool, drop *[]string, disputes map[string][]byte) {
	k := callKey(r.Gateway, r.RequestID)
	b := s.book
	b.mu.Lock()
	pc := b.pending[k]
	delete(b.pending, k)
	b.mu.Unlock()
	if pc != nil {
		*drop = append(*drop, sideClaim+k)
		s.metrics.claims.WithLabelValues("matched").Inc()
	}
	if !applied {
		return
	}
	if pc != nil && pc.R.Node != r.Node {
		pc = nil // another node's claim under the request id (the gateway failed over): no story to compare
	}
	if why := disputed(r, pc); why != "" {
		s.dispute(r, why, disputes)
	}
}

// disputed says why a receipt and the node's claim disagree, or "". The
// receipt carries the claim the node gave the gateway: billing below it
// (beyond a few tokens a client that left may not have received) means one
// of the two inflates. A node that reported another claim to settlement
// than it gave the gateway told two stories.
func disputed(r *p2p.Receipt, reported *pendingClaim) string {
	c := r.Claim
	switch {
	case c.PromptTokens > r.PromptTokens:
		return fmt.Sprintf("the node claimed %d prompt tokens, the gateway billed %d", c.PromptTokens, r.PromptTokens)
	case c.CompletionTokens > r.CompletionTokens+4+r.CompletionTokens/20:
		return fmt.Sprintf("the node claimed %d completion tokens, the gateway billed %d", c.CompletionTokens, r.CompletionTokens)
	case reported != nil && !c.Incomplete && reported.R.Claim.Hash() != c.Hash():
		return "the node reported another claim to settlement than it gave the gateway"
	}
	return ""
}

// dispute counts one against the call's node, gateway and consumer, and
// adds the counts to write to kvs (see saveDisputes).
func (s *Settlement) dispute(r *p2p.Receipt, why string, kvs map[string][]byte) {
	b := s.book
	b.mu.Lock()
	for _, k := range []string{"node/" + r.Node, "gateway/" + r.Gateway, "account/" + r.Consumer} {
		b.disputes[k]++
		kvs[sideDispute+k] = nil // the value is read when saved
	}
	b.mu.Unlock()
	s.metrics.claims.WithLabelValues("disputed").Inc()
	s.log.Warn("dispute: node and gateway disagree on a call", "request", r.RequestID, "node", r.Node, "gateway", r.Gateway, "why", why)
}

// saveDisputes writes the dispute counts named in kvs, as they are now, in
// one write without an fsync (they are advisory; the next synced commit
// carries them), so a node that inflates every claim does not cost the
// committers an fsync a receipt.
func (s *Settlement) saveDisputes(kvs map[string][]byte) {
	if len(kvs) == 0 {
		return
	}
	b := s.book
	b.dmu.Lock()
	defer b.dmu.Unlock()
	b.mu.Lock()
	for k := range kvs {
		kvs[k] = []byte(strconv.FormatInt(b.disputes[strings.TrimPrefix(k, sideDispute)], 10))
	}
	b.mu.Unlock()
	if err := s.led.PutSideNoSync(kvs); err != nil {
		s.log.Error("disputes not stored", "err", err)
	}
}

// lateReceipt handles a receipt whose call was billed from the node's
// claim already (the ledger has its key under another payload): it is a
// duplicate, and the gateway has now settled that call.
//
// The call may be in any state of its claim's billing: recorded as
// unreceipted, being billed right now (the posting is in, the record not
// yet), or still pending after a restart that came between the two. The
// receipt is a duplicate in each; only what the ledger holds counts.
func (s *Settlement) lateReceipt(r *p2p.Receipt, disputes map[string][]byte) bool {
	k := callKey(r.Gateway, r.RequestID)
	b := s.book
	b.mu.Lock()
	u, ok := b.unrec[k]
	var drop []string
	switch {
	case ok:
		delete(b.unrec, k)
		b.unowe(u.account, r.Gateway)
		drop = append(drop, sideUnrec+k)
	case b.billing[k]:
		ok = true
		b.late[k] = true
	case b.pending[k] != nil:
		ok = true
		delete(b.pending, k)
		drop = append(drop, sideClaim+k)
	}
	b.mu.Unlock()
	if !ok {
		return false
	}
	s.led.DeleteSide(drop...)
	s.log.Info("late receipt for a call billed from its node's claim", "request", r.RequestID, "gateway", r.Gateway)
	if why := disputed(r, nil); why != "" {
		s.dispute(r, why, disputes) // billed at the node's count, which the gateway's disputes
	}
	return true
}

// unowe takes one unreceipted call off account's debt through gateway.
// The caller holds b.mu.
func (b *claimBook) unowe(account, gateway string) {
	k := account + "/" + gateway
	if b.owing[k]--; b.owing[k] <= 0 {
		delete(b.owing, k)
	}
}

// owing is how many calls the gateway served on the account without a
// receipt within unreceiptedFor; from maxUnreceipted of them the gateway
// gets no new credit on the account until they come.
func (s *Settlement) owing(account string, gateway peer.ID) int {
	s.book.mu.Lock()
	defer s.book.mu.Unlock()
	return s.book.owing[account+"/"+gateway.String()]
}

// forgetOldUnreceipted drops unreceipted calls older than unreceiptedFor:
// they still were billed, but no longer hold the gateway's credit back.
func (s *Settlement) forgetOldUnreceipted(now time.Time) {
	b := s.book
	var drop []string
	b.mu.Lock()
	for k, u := range b.unrec {
		if now.Sub(u.at) > unreceiptedFor {
			gw, _, _ := strings.Cut(k, "/")
			delete(b.unrec, k)
			b.unowe(u.account, gw)
			drop = append(drop, sideUnrec+k)
		}
	}
	b.mu.Unlock()
	s.led.DeleteSide(drop...)
}

// claimStanding is what GET /v1/account shows of an account: disputes on
// its calls and nodes, and its calls billed from node claims because its
// gateway sent no receipt.
func (s *Settlement) claimStanding(account string) (disputes, unreceipted int64) {
	nodes := s.led.Nodes(account)
	b := s.book
	b.mu.Lock()
	defer b.mu.Unlock()
	disputes = b.disputes["account/"+account]
	for _, n := range nodes {
		disputes += b.disputes["node/"+n]
	}
	for k, n := range b.owing {
		if strings.HasPrefix(k, account+"/") {
			unreceipted += int64(n)
		}
	}
	return disputes, unreceipted
}

// Disputes returns the disputes counted against a node, gateway or account
// (kind "node", "gateway" or "account").
func (s *Settlement) Disputes(kind, id string) int64 {
	s.book.mu.Lock()
	defer s.book.mu.Unlock()
	return s.book.disputes[kind+"/"+id]
}

// gatewayView is one gateway in GET /v1/network: its disputes and the
// calls it served without sending their receipts.
type gatewayView struct {
	Gateway          string `json:"gateway"`
	Disputes         int64  `json:"disputes"`
	UnreceiptedCalls int64  `json:"unreceipted_calls"`
}

// gatewayViews lists the gateways with disputes or unreceipted calls.
func (s *Settlement) gatewayViews() []gatewayView {
	b := s.book
	b.mu.Lock()
	by := map[string]*gatewayView{}
	at := func(gw string) *gatewayView {
		if by[gw] == nil {
			by[gw] = &gatewayView{Gateway: gw}
		}
		return by[gw]
	}
	for k, n := range b.disputes {
		if gw, ok := strings.CutPrefix(k, "gateway/"); ok {
			at(gw).Disputes = n
		}
	}
	for k := range b.unrec {
		gw, _, _ := strings.Cut(k, "/")
		at(gw).UnreceiptedCalls++
	}
	b.mu.Unlock()
	out := make([]gatewayView, 0, len(by))
	for _, v := range by {
		out = append(out, *v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Gateway < out[j].Gateway })
	return out
}

// claimLoop bills, every second, the claims whose receipt did not come
// within the grace period.
func (s *Settlement) claimLoop(ctx context.Context, every time.Duration) {
	tick.Every(ctx, every, func(now time.Time) {
		s.billUnreceipted(ctx, now)
		s.forgetOldUnreceipted(now)
	})
}

// billUnreceipted bills every claim that waited longer than the grace.
func (s *Settlement) billUnreceipted(ctx context.Context, now time.Time) {
	var due []*pendingClaim
	s.book.mu.Lock()
	for _, pc := range s.book.pending {
		if now.Sub(pc.At) >= s.cfg.ClaimGrace {
			due = append(due, pc)
		}
	}
	s.book.mu.Unlock()
	for len(due) > 0 && ctx.Err() == nil {
		n := min(len(due), maxCommitBatch)
		s.billClaims(due[:n])
		due = due[n:]
	}
}

// billClaims bills claims through the intake's committers, as receipts
// whose tokens are the node's claim and whose price is the table's.
func (s *Settlement) billClaims(pcs []*pendingClaim) {
	b := s.book
	cs := make([]*checked, 0, len(pcs))
	for _, pc := range pcs {
		c, err := s.claimChecked(pc.R)
		if err != nil {
			s.log.Warn("node claim cannot be billed", "request", pc.R.RequestID, "node", pc.R.Node, "err", err)
			s.forgetClaim(pc.R)
			continue
		}
		k := callKey(c.r.Gateway, c.r.RequestID)
		b.mu.Lock()
		still := b.pending[k] == pc // its receipt may have come meanwhile
		if still {
			b.billing[k] = true // a receipt that conflicts from here on is a duplicate (lateReceipt)
		}
		b.mu.Unlock()
		if !still {
			continue
		}
		select {
		case s.intake.ch <- c:
			cs = append(cs, c)
		case <-s.stopped:
			b.mu.Lock()
			delete(b.billing, k)
			b.mu.Unlock()
		}
	}
	var drop []string
	now := time.Now()
	unrec := map[string][]byte{}
	done := make([]string, 0, len(cs))
	for _, c := range cs {
		o := <-c.done
		k := callKey(c.r.Gateway, c.r.RequestID)
		done = append(done, k)
		switch {
		case o.Err == nil:
			// Applied, or a replay of our own billing (a crash came between
			// the posting and this record): either way it is billed from the
			// claim alone.
			unrec[sideUnrec+k] = fmt.Appendf(nil, "%s\t%d", c.r.Consumer, now.UnixMilli())
			s.metrics.claims.WithLabelValues("billed").Inc()
		case errors.Is(o.Err, ledger.ErrConflict):
			s.metrics.claims.WithLabelValues("matched").Inc() // its receipt won the race
		case errors.Is(o.Err, ErrIntakeStopped):
			continue // stays pending for the next run
		default:
			s.log.Warn("node claim not billed", "request", c.r.RequestID, "err", o.Err)
		}
		drop = append(drop, sideClaim+k)
	}
	b.mu.Lock()
	for k := range unrec {
		if b.late[strings.TrimPrefix(k, sideUnrec)] {
			delete(unrec, k) // its receipt came while it was billed: settled
		}
	}
	b.mu.Unlock()
	if len(unrec) > 0 {
		if err := s.led.PutSide(unrec); err != nil {
			s.log.Error("unreceipted calls not stored", "err", err)
		}
	}
	b.mu.Lock()
	for k, v := range unrec {
		k = strings.TrimPrefix(k, sideUnrec)
		if _, ok := b.unrec[k]; !ok && !b.late[k] {
			account, _, _ := strings.Cut(string(v), "\t")
			b.unrec[k] = unreceipted{account, now}
			gw, _, _ := strings.Cut(k, "/")
			b.owing[account+"/"+gw]++
			s.log.Warn("call billed from its node's claim: the gateway sent no receipt", "call", k, "consumer", account)
		}
	}
	for _, k := range done {
		delete(b.billing, k)
		delete(b.late, k)
	}
	for _, d := range drop {
		delete(b.pending, strings.TrimPrefix(d, sideClaim))
	}
	b.mu.Unlock()
	s.led.DeleteSide(drop...)
}

// forgetClaim drops a claim that can never be billed.
func (s *Settlement) forgetClaim(r *p2p.Receipt) {
	k := callKey(r.Gateway, r.RequestID)
	s.book.mu.Lock()
	delete(s.book.pending, k)
	s.book.mu.Unlock()
	s.led.DeleteSide(sideClaim + k)
}

// claimChecked turns a node's claim into an intake entry: billed at the
// table's price for its model, against the gateway's hold on the consumer.
func (s *Settlement) claimChecked(r *p2p.Receipt) (*checked, error) {
	gw, err := peer.Decode(r.Gateway)
	if err != nil {
		return nil, err
	}
	if _, err := s.led.Account(r.Consumer); err != nil {
		return nil, err
	}
	b := *r
	b.Price = s.cfg.Prices.For(r.Model)
	b.PromptTokens, b.CompletionTokens = r.Claim.PromptTokens, r.Claim.CompletionTokens
	b.CostUcr = economy.Cost(b.Price, b.PromptTokens, b.CompletionTokens)
	c := &checked{r: &b, claim: true, payload: append([]byte(claimPayloadDomain), b.SigningBytes()...), cost: b.CostUcr, done: make(chan Outcome, 1)}
	if r.Hold != "" {
		c.holdID = ledgerHoldID(gw, r.Hold)
		if h, ok := s.led.HoldInfo(c.holdID); !ok || h.Account != r.Consumer {
			c.holdID = "" // not that consumer's hold: billed from the balance, never below zero
		}
	}
	var ok bool
	if c.provider, ok = s.led.NodeAccount(r.Node); !ok {
		c.provider = ledger.NodeAccountPrefix + r.Node
	}
	return c, nil
}
