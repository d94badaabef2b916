package settlement

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/nodecore"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// Receipt intake. Receipts are checked where they arrive (signatures,
// grant, hold, price, cost: CPU work spread over the cores), then one
// committer turns them into ledger postings — the split, the bounty and the
// anti-flapping cut — and commits as many as are waiting in one synced
// Pebble batch, the chain link with them. Only then is anything
// acknowledged.

// Outcome is what became of one receipt.
type Outcome struct {
	Applied bool  // false with a nil Err: a replay of a receipt already applied
	Err     error // why it was refused, or ErrIntakeStopped
}

// ErrIntakeStopped is returned for receipts that arrive while the peer stops.
var ErrIntakeStopped = errors.New("settlement: stopping; retry")

// maxCommitBatch bounds one ledger batch.
const maxCommitBatch = 2048

type checked struct {
	r        *p2p.Receipt
	payload  []byte
	provider string
	cost     int64
	holdID   string // ledger id of the hold, "" for none
	claim    bool   // billed from the node's own claim: its gateway sent no receipt
	done     chan Outcome
}

type intake struct {
	s        *Settlement
	ch       chan *checked
	applying atomic.Int64 // apply calls in progress, for a clean stop
}

// ApplyReceipts checks and commits receipts sent by gateway from, each
// carrying its node's claim MAC and its own gateway signature; one outcome per receipt, in
// order.
func (s *Settlement) ApplyReceipts(from peer.ID, rs []*p2p.Receipt) []Outcome {
	return s.apply(from, rs, func(int, *p2p.Receipt) signed { return signed{} })
}

// ApplyReceiptBatch checks and commits a batch under batch signatures: the
// gateway's over the whole batch, each node's over its claims (receipts no
// claim batch covers fall back to the node's MAC of their claim).
func (s *Settlement) ApplyReceiptBatch(from peer.ID, b *p2p.ReceiptBatch) []Outcome {
	fail := func(err error) []Outcome {
		out := make([]Outcome, len(b.Receipts))
		for i := range out {
			out[i] = Outcome{Err: err}
		}
		return out
	}
	if b.Gateway != from.String() {
		return fail(fmt.Errorf("%w: a batch signed for gateway %s sent by %s", ErrReceiptRejected, b.Gateway, from))
	}
	for _, r := range b.Receipts {
		if r == nil {
			return fail(fmt.Errorf("%w: a null receipt", ErrReceiptRejected))
		}
	}
	payloads := make([][]byte, len(b.Receipts))
	parallel(len(b.Receipts), func(i int) { payloads[i] = b.Receipts[i].SigningBytes() })
	if err := b.VerifyGatewayPayloads(payloads); err != nil {
		return fail(err)
	}
	sets := make([]map[[32]byte]struct{}, len(b.Claims))
	for i, c := range b.Claims {
		if c.Gateway == b.Gateway && c.Verify() == nil {
			sets[i] = c.Set()
		}
	}
	return s.apply(from, b.Receipts, func(i int, r *p2p.Receipt) signed {
		sg := signed{gateway: true, payload: payloads[i]}
		if ref := b.Refs[i]; ref >= 0 && sets[ref] != nil && b.Claims[ref].Node == r.Node {
			_, sg.node = sets[ref][r.Claim.Hash()]
		}
		return sg
	})
}

// signed says which of a receipt's signatures a batch already proved, and
// carries its signing bytes when they were computed already.
type signed struct {
	gateway, node bool
	payload       []byte
}

// parallel runs f(0..n-1) over the cores.
func parallel(n int, f func(int)) {
	workers := min(runtime.GOMAXPROCS(0), n)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				f(i)
			}
		})
	}
	wg.Wait()
}

func (s *Settlement) apply(from peer.ID, rs []*p2p.Receipt, proven func(int, *p2p.Receipt) signed) []Outcome {
	s.intake.applying.Add(1)
	defer s.intake.applying.Add(-1)
	fromID := from.String() // base58: once a batch, not once a receipt
	out := make([]Outcome, len(rs))
	pending := make([]*checked, len(rs))
	// Check in parallel: what signature checking is left dominates.
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for i, r := range rs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			var sg signed
			if r != nil {
				sg = proven(i, r)
			}
			c, err := s.check(from, fromID, r, sg)
			if err != nil {
				out[i] = Outcome{Err: err}
				return
			}
			pending[i] = c
			// Hand it to the committer at once: checks overlap commits.
			select {
			case s.intake.ch <- c:
			case <-s.stopped:
				c.done <- Outcome{Err: ErrIntakeStopped}
			}
		})
	}
	wg.Wait()
	for i, c := range pending {
		if c != nil {
			out[i] = <-c.done
		}
		s.countOutcome(from, rs[i], out[i])
	}
	return out
}

// ApplyReceipt is ApplyReceipts for one receipt.
func (s *Settlement) ApplyReceipt(from peer.ID, r *p2p.Receipt) (bool, error) {
	o := s.ApplyReceipts(from, []*p2p.Receipt{r})[0]
	return o.Applied, o.Err
}

func (s *Settlement) countOutcome(from peer.ID, r *p2p.Receipt, o Outcome) {
	switch {
	case o.Err == nil && o.Applied:
		s.metrics.receipts.WithLabelValues("applied").Inc()
	case o.Err == nil:
		s.metrics.receipts.WithLabelValues("duplicate").Inc()
	case errors.Is(o.Err, ErrReceiptRejected), errors.Is(o.Err, p2p.ErrBadReceipt), errors.Is(o.Err, p2p.ErrBadSignature),
		errors.Is(o.Err, ledger.ErrConflict), errors.Is(o.Err, ledger.ErrInvalid):
		s.metrics.receipts.WithLabelValues("rejected").Inc()
		id := ""
		if r != nil {
			id = r.RequestID
		}
		s.log.Warn("receipt rejected", "request", id, "gateway", from.String(), "err", o.Err)
	default:
		s.metrics.receipts.WithLabelValues("failed").Inc()
		s.log.Error("receipt not applied", "err", o.Err)
	}
}

// check validates one receipt from gateway from; sg says which signatures
// a batch signature already proved.
func (s *Settlement) check(from peer.ID, fromID string, r *p2p.Receipt, sg signed) (*checked, error) {
	switch {
	case r == nil:
		return nil, fmt.Errorf("%w: receipt missing", ErrReceiptRejected)
	case r.Gateway != fromID:
		return nil, fmt.Errorf("%w: sent by %s but signed for gateway %s", ErrReceiptRejected, from, r.Gateway)
	case r.RequestID == "":
		return nil, fmt.Errorf("%w: no request id", ErrReceiptRejected)
	}
	if err := s.checkGrant(r); err != nil {
		return nil, err
	}
	if err := r.CheckClaim(); err != nil {
		return nil, err
	}
	if !sg.node {
		if err := s.claims.Verify(r.Claim, r.NodeMAC); err != nil {
			return nil, err
		}
	}
	if !sg.gateway {
		if err := r.VerifyGateway(); err != nil {
			return nil, err
		}
	}
	if r.Price != s.cfg.Prices.For(r.Model) && !s.prices.priced(r.Model, r.Price, time.UnixMilli(r.TimeMs)) {
		return nil, fmt.Errorf("%w: price %+v is not the table's %+v for %s, nor one served when the call was made",
			ErrReceiptRejected, r.Price, s.cfg.Prices.For(r.Model), r.Model)
	}
	cost := economy.Cost(r.Price, r.PromptTokens, r.CompletionTokens)
	if r.CostUcr != cost {
		return nil, fmt.Errorf("%w: cost %d, the table says %d", ErrReceiptRejected, r.CostUcr, cost)
	}
	if _, err := s.led.Account(r.Consumer); err != nil {
		return nil, fmt.Errorf("%w: consumer: %v", ErrReceiptRejected, err)
	}
	payload := sg.payload
	if payload == nil {
		payload = r.SigningBytes()
	}
	c := &checked{r: r, payload: payload, cost: cost, done: make(chan Outcome, 1)}
	if r.Hold != "" {
		c.holdID = ledgerHoldID(from, r.Hold)
		h, ok := s.led.HoldInfo(c.holdID)
		if !ok || h.Account != r.Consumer {
			return nil, fmt.Errorf("%w: hold %s is not this gateway's hold on %s", ErrReceiptRejected, r.Hold, r.Consumer)
		}
	}
	var ok bool
	if c.provider, ok = s.led.NodeAccount(r.Node); !ok {
		c.provider = ledger.NodeAccountPrefix + r.Node
	}
	return c, nil
}

// committers is how many batches may be in the ledger at once: while one
// waits for its fsync the next is applied, and they share syncs.
const committers = 3

// run commits receipts until ctx ends.
func (in *intake) run(ctx context.Context) {
	var wg sync.WaitGroup
	for range committers {
		wg.Go(func() { in.commitLoop(ctx) })
	}
	wg.Wait()
}

// drain answers ErrIntakeStopped to every receipt still handed in after
// the committers stopped, until no apply call is left; nothing is left
// waiting forever. The gateways retry those receipts later.
func (in *intake) drain() {
	for {
		select {
		case c := <-in.ch:
			c.done <- Outcome{Err: ErrIntakeStopped}
		default:
			if in.applying.Load() == 0 && len(in.ch) == 0 {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func (in *intake) commitLoop(ctx context.Context) {
	batch := make([]*checked, 0, maxCommitBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case c := <-in.ch:
			batch = append(batch, c)
		}
	drain:
		for len(batch) < maxCommitBatch {
			select {
			case c := <-in.ch:
				batch = append(batch, c)
			default:
				break drain
			}
		}
		in.commit(batch)
	}
}

// commit applies a batch: one posting per receipt, one synced write.
func (in *intake) commit(batch []*checked) {
	s := in.s
	now := time.Now()
	pool := s.poolBalance()
	postings := make([]ledger.Posting, len(batch))
	legs := make([]economy.Legs, len(batch))
	mods := map[string]economy.Modifiers{} // per node/model: a batch has many calls of few instances
	for i, c := range batch {
		k := c.r.Node + "/" + c.r.Model
		m, ok := mods[k]
		if !ok {
			m = s.modifiers(c.r.Node, c.r.Model, now)
			mods[k] = m
		}
		if c.provider == c.r.Consumer {
			m.Bounty = 1 // no bounty for serving oneself: the pool would pay a consumer for its own calls
		}
		legs[i] = economy.ComputeLegs(c.cost, s.cfg.Terms, m, pool)
		pool += legs[i].PlatformToPool - legs[i].PoolToProvider
		postings[i] = s.posting(c, legs[i])
	}
	start := time.Now()
	results, err := s.led.PostBatch(postings)
	s.metrics.committed("receipts", start, err)
	if err != nil {
		for _, c := range batch {
			c.done <- Outcome{Err: err}
		}
		return
	}
	var drop []string               // node claims their receipts settled
	disputes := map[string][]byte{} // dispute counts to save
	for i, c := range batch {
		res := results[i]
		if errors.Is(res.Err, ledger.ErrInsufficientFunds) {
			// The consumer (or, rarely, the bounty pool) could not cover it:
			// charge what is there, on its own.
			res.Applied, res.Err = in.capped(c, &legs[i], now)
		}
		switch {
		case c.claim:
		case res.Err == nil:
			s.receiptSettled(c.r, res.Applied, &drop, disputes)
		case errors.Is(res.Err, ledger.ErrConflict) && s.lateReceipt(c.r, disputes):
			res.Err = nil // billed from its node's claim already: a duplicate
		}
		if res.Err == nil && res.Applied {
			s.metrics.settledUcr.Add(float64(legs[i].Consumer))
			s.rep.Record(c.r.Node, c.r.Model, nodecore.EventSuccess, 1, now)
			earned := legs[i].PoolToProvider
			if c.provider != c.r.Consumer {
				earned += legs[i].ToProvider
			}
			s.rep.Paid(c.r.Node, c.r.Model, earned)
		}
		c.done <- Outcome{Applied: res.Applied, Err: res.Err}
	}
	if len(drop) > 0 {
		s.led.DeleteSide(drop...)
	}
	s.saveDisputes(disputes)
}

// capped settles a receipt its consumer cannot fully cover: what is
// available (and left on its hold) is charged, never more. A balance never
// goes below zero. posted becomes the legs it billed.
func (in *intake) capped(c *checked, posted *economy.Legs, now time.Time) (bool, error) {
	s := in.s
	for range 3 {
		a, err := s.led.Account(c.r.Consumer)
		if err != nil {
			return false, err
		}
		avail := a.Available()
		if c.holdID != "" {
			if h, ok := s.led.HoldInfo(c.holdID); ok && !h.Closed {
				avail += h.Remaining
			}
		}
		charged := min(c.cost, max(avail, 0))
		s.log.Warn("consumer could not cover a call; charging what is left", "request", c.r.RequestID, "cost", c.cost, "charged", charged)
		l := s.legs(c, charged, s.poolBalance(), now)
		start := time.Now()
		res, err := s.led.PostBatch([]ledger.Posting{s.posting(c, l)})
		s.metrics.committed("receipt_capped", start, err)
		if err != nil {
			return false, err
		}
		if !errors.Is(res[0].Err, ledger.ErrInsufficientFunds) {
			*posted = l // what was billed, for the metrics and the node's earnings
			return res[0].Applied, res[0].Err
		}
	}
	return false, fmt.Errorf("settlement: could not settle %s against a moving balance; retry", c.r.RequestID)
}

// legs prices one call: the provider's share with its anti-flapping cut
// and its bounty, the platform's share, the pool's funding.
func (s *Settlement) legs(c *checked, cost, pool int64, now time.Time) economy.Legs {
	m := s.modifiers(c.r.Node, c.r.Model, now)
	if c.provider == c.r.Consumer {
		m.Bounty = 1
	}
	return economy.ComputeLegs(cost, s.cfg.Terms, m, pool)
}

// modifiers are an instance's payout modifiers at now: its anti-flapping
// cut and the bounty its trust tier earns on its model.
func (s *Settlement) modifiers(node, model string, now time.Time) economy.Modifiers {
	st := s.rep.Standing(node, model, now)
	mods := economy.NoModifiers()
	if st.Known {
		mods.Flap = s.cfg.Flap.FlapFactor(st.SwitchedAt, now)
		tier := s.cfg.Trust.Tier(st.Age, st.Score)
		mods.Bounty = economy.Multiplier(s.underSupply(model), tier, s.cfg.Trust)
	}
	return mods
}

// posting turns legs into transfers whose ids derive from the request id.
func (s *Settlement) posting(c *checked, l economy.Legs) ledger.Posting {
	r := c.r
	// Keyed by gateway and request id: a node that saw a request id (say,
	// during failover) cannot squat it through a gateway of its own.
	p := ledger.Posting{Key: "call/" + r.Gateway + "/" + r.RequestID, Payload: c.payload, Consumer: r.Consumer, Hold: c.holdID}
	add := func(from, to string, amount int64, leg string) {
		if amount > 0 && from != to {
			p.Transfers = append(p.Transfers, ledger.Transfer{From: from, To: to, Amount: amount, Kind: ledger.KindCall, Leg: leg})
		}
	}
	add(r.Consumer, c.provider, l.ToProvider, "provider") // an operator using its own node pays only the platform
	add(r.Consumer, ledger.AccountPlatform, l.ToPlatform, "platform")
	if l.PlatformToPool > 0 {
		p.Transfers = append(p.Transfers, ledger.Transfer{From: ledger.AccountPlatform, To: ledger.AccountBountyPool, Amount: l.PlatformToPool, Kind: "pool", Leg: "pool"})
	}
	if l.PoolToProvider > 0 {
		p.Transfers = append(p.Transfers, ledger.Transfer{From: ledger.AccountBountyPool, To: c.provider, Amount: l.PoolToProvider, Kind: ledger.KindBounty, Leg: "bounty"})
	}
	return p
}

func (s *Settlement) poolBalance() int64 {
	a, err := s.led.Account(ledger.AccountBountyPool)
	if err != nil {
		return 0
	}
	return a.Balance
}
