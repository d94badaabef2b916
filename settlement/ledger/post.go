package ledger

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/cockroachdb/pebble/v2"
)

// Transfer kinds used by Token-Router. Kind is free-form; these are the ones
// the ledger gives meaning to (see Post).
const (
	KindGrant  = "grant"  // mint -> new account: starting credit
	KindCall   = "call"   // consumer -> provider or platform: a paid call
	KindBounty = "bounty" // platform or bounty pool -> provider: a payout multiplier
)

// Transfer moves Amount µcr from one account to another.
type Transfer struct {
	From, To string
	Amount   int64
	Kind     string
	// Leg names the transfer within its posting ("provider", "platform",
	// "bounty", ...). The applied transfer's ID is the posting's Key + "/" +
	// Leg, or Key + "/" + its index in Transfers when Leg is empty. Legs are
	// unique within a posting and contain no '/'.
	Leg string
}

// Posting is a set of transfers applied together, guarded by an idempotency key.
type Posting struct {
	// Key is the idempotency key (e.g. a request id); required.
	Key string
	// Payload is the canonical bytes of what is being applied (e.g. the
	// receipt); its SHA-256 is stored with Key to detect reuse of Key for
	// something else.
	Payload []byte
	// Transfers are applied in order; zero-amount transfers are omitted.
	Transfers []Transfer
	// Consumer, if set, is the account whose Calls counter is incremented
	// once when the posting applies.
	Consumer string
	// Hold, if set, names a hold on Consumer: Consumer's debits in this
	// posting are drawn from the hold's Remaining first and from Consumer's
	// available balance for the rest. A closed (voided or expired) hold
	// draws nothing: the debits come from the available balance, so a call
	// made under a hold still settles after the hold lapsed.
	Hold string
}

// BatchResult is the outcome of one posting of a PostBatch.
type BatchResult struct {
	// Applied is true when the posting was applied by this call.
	Applied bool
	// Err is why the posting was rejected (see Post); nil for an applied
	// posting or a replay.
	Err error
}

// Post applies all of p's transfers atomically — transfers, balances,
// counters, hold draws and the idempotency record in one pebble batch
// committed with pebble.Sync — or none of them. It returns applied=true when
// it applied the posting now. It is PostBatch with one posting.
//
// Re-posting a Key with the same payload returns (false, nil) and changes
// nothing; the same Key with a different payload returns ErrConflict.
// Transfers apply in order, and one that would take any account other than
// mint below its available balance (balance minus held) fails the whole
// posting with ErrInsufficientFunds (the key is not recorded, so a later
// retry can succeed). Unknown accounts give ErrUnknownAccount, except that an
// id starting with "node:" is created with a zero balance (a provider not
// linked to any account). A negative amount, a self-transfer, an empty kind,
// an empty key, a repeated leg or a Hold without a Consumer give ErrInvalid;
// an unknown Hold gives ErrUnknownHold.
//
// Counters: the receiving user account of a "call" or "bounty" transfer gets
// Earned += amount; the paying user account of a "call" transfer gets
// Spent += amount; Consumer gets Calls += 1. System accounts (mint, platform,
// bounty_pool) keep no counters.
func (l *Ledger) Post(p Posting) (applied bool, err error) {
	res, err := l.PostBatch([]Posting{p})
	if err != nil {
		return false, err
	}
	return res[0].Applied, res[0].Err
}

// PostBatch applies each posting on its own, as Post would, and commits all
// of them in ONE pebble batch with ONE fsync. A rejected posting leaves no
// trace and does not affect the others; a posting whose key repeats an
// earlier one of the batch is a replay of it (or a conflict). Results are in
// the order of ps.
//
// The error is for a failed commit (or a closed ledger): then no posting was
// applied and readers see no change. After a failed fsync the ledger refuses
// further writes; reopen it.
func (l *Ledger) PostBatch(ps []Posting) ([]BatchResult, error) {
	res := make([]BatchResult, len(ps))
	hashes := make([][32]byte, len(ps))
	for i := range ps {
		if res[i].Err = validatePosting(&ps[i]); res[i].Err == nil {
			hashes[i] = sha256.Sum256(ps[i].Payload)
		}
	}
	err := l.run(func(t *txn) error {
		for i := range ps {
			if res[i].Err != nil {
				continue
			}
			var fatal error
			if res[i].Applied, res[i].Err, fatal = t.post(&ps[i], &hashes[i]); fatal != nil {
				return fatal
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// validatePosting checks what can be checked without state.
func validatePosting(p *Posting) error {
	if p.Key == "" {
		return fmt.Errorf("%w: posting without a key", ErrInvalid)
	}
	if p.Hold != "" && p.Consumer == "" {
		return fmt.Errorf("%w: posting %q: hold %q without a consumer", ErrInvalid, p.Key, p.Hold)
	}
	for i := range p.Transfers {
		t := &p.Transfers[i]
		switch {
		case t.Amount < 0:
			return fmt.Errorf("%w: transfer %d: negative amount %d", ErrInvalid, i, t.Amount)
		case t.Kind == "":
			return fmt.Errorf("%w: transfer %d: empty kind", ErrInvalid, i)
		case t.From == t.To:
			return fmt.Errorf("%w: transfer %d: from and to are both %q", ErrInvalid, i, t.From)
		case strings.Contains(t.Leg, "/"):
			return fmt.Errorf("%w: transfer %d: leg %q contains '/'", ErrInvalid, i, t.Leg)
		}
		for j := range i {
			if legOf(p.Transfers, i) == legOf(p.Transfers, j) {
				return fmt.Errorf("%w: transfers %d and %d share leg %q", ErrInvalid, j, i, legOf(p.Transfers, i))
			}
		}
	}
	return nil
}

// legOf is the ID suffix of transfer i: its Leg, or its index.
func legOf(ts []Transfer, i int) string {
	if ts[i].Leg != "" {
		return ts[i].Leg
	}
	return strconv.Itoa(i)
}

// post applies p within t as one step: a replay or conflict is decided from
// the idempotency records, and a rejected posting (err) is rolled back. A
// fatal error (reading or writing the store) fails the whole txn.
func (t *txn) post(p *Posting, hash *[32]byte) (applied bool, err, fatal error) {
	if prev, ok := t.idem[p.Key]; ok {
		if prev != *hash {
			return false, fmt.Errorf("%w: key %q", ErrConflict, p.Key), nil
		}
		return false, nil, nil
	}
	// The filter has every key of the store (and of every batch handed to
	// Pebble): "absent" is definite, so only a possible replay reads Pebble.
	if t.l.idem.mayContain(p.Key) {
		t.kbuf = append(append(t.kbuf[:0], prefixIdem...), p.Key...)
		prev, found, err := lookupIdem(t.l.db, t.kbuf)
		if err != nil {
			return false, nil, err
		}
		if found {
			if prev.hash != *hash {
				return false, fmt.Errorf("%w: key %q", ErrConflict, p.Key), nil
			}
			return false, nil, nil
		}
	}
	t.begin()
	if err := t.apply(p); err != nil {
		t.rollback()
		return false, err, nil
	}
	if err := t.accept(p, hash, true); err != nil {
		return false, nil, err
	}
	return true, nil, nil
}

// lookupIdem reads the idempotency record under key (i/<key>). Every batch
// handed to Pebble is readable, so this sees every posting of the working
// state.
func lookupIdem(db pebble.Reader, key []byte) (idemRecord, bool, error) {
	v, closer, err := db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return idemRecord{}, false, nil
	}
	if err != nil {
		return idemRecord{}, false, fmt.Errorf("ledger: read %q: %w", key, err)
	}
	defer closer.Close()
	rec, err := decodeIdem(v)
	return rec, err == nil, err
}

// apply moves money for each transfer of p in order, checking funds after
// each, draws Consumer's debits from p.Hold, and counts the call. Records
// are queued in t.pend and t.pendEv for accept.
func (t *txn) apply(p *Posting) error {
	hi := -1
	if p.Hold != "" {
		i, err := t.hold(p.Hold)
		if err != nil {
			return err
		}
		if h := &t.holds.vals[i]; h.Account != p.Consumer {
			return fmt.Errorf("%w: hold %q is on %q, not on consumer %q", ErrInvalid, p.Hold, h.Account, p.Consumer)
		}
		hi = i
	}
	var drawn int64
	for i := range p.Transfers {
		tr := &p.Transfers[i]
		if tr.Amount == 0 {
			continue
		}
		fi, err := t.acct(tr.From)
		if err != nil {
			return err
		}
		ti, err := t.acct(tr.To)
		if err != nil {
			return err
		}
		from, to := t.accts.at(fi), t.accts.at(ti)
		var draw int64
		var h *holdRec
		if hi >= 0 && tr.From == p.Consumer {
			if h = t.holds.at(hi); !h.Closed {
				draw = min(tr.Amount, h.Remaining)
			}
		}
		if excess := tr.Amount - draw; from.ID != AccountMint && from.Available() < excess {
			return fmt.Errorf("%w: transfer %d: %q has %d µcr available, needs %d",
				ErrInsufficientFunds, i, from.ID, from.Available(), excess)
		}
		if from.Balance < math.MinInt64+tr.Amount || to.Balance > math.MaxInt64-tr.Amount {
			return fmt.Errorf("%w: transfer %d: balance overflow", ErrInvalid, i)
		}
		if draw > 0 {
			h.Remaining -= draw
			from.Held -= draw
			drawn += draw
		}
		from.Balance -= tr.Amount
		to.Balance += tr.Amount
		if !isSystem(to.ID) && (tr.Kind == KindCall || tr.Kind == KindBounty) {
			to.Earned = satAdd(to.Earned, tr.Amount)
		}
		if !isSystem(from.ID) && tr.Kind == KindCall {
			from.Spent = satAdd(from.Spent, tr.Amount)
		}
		t.pend = append(t.pend, pendingTx{index: i, t: tr, from: fi, to: ti})
	}
	if p.Consumer != "" {
		ci, err := t.acct(p.Consumer)
		if err != nil {
			return err
		}
		t.accts.at(ci).Calls++
	}
	if drawn > 0 {
		h := &t.holds.vals[hi]
		t.pendEv = append(t.pendEv, holdEvent{Kind: evDraw, Hold: h.ID, Account: h.Account,
			Delta: -drawn, Expires: unixNano(h.Expires)})
	}
	return nil
}

// accept writes the records of the posting t.apply just applied, and its
// idempotency record if idem.
func (t *txn) accept(p *Posting, hash *[32]byte, idem bool) error {
	first := t.nextSeq
	if len(t.pend) > 0 {
		t.addPosting(p)
		t.addIndex(first)
	}
	for _, e := range t.pendEv {
		i, _ := t.holds.find(e.Hold)
		if err := t.addEvent(i, e); err != nil {
			return err
		}
	}
	t.pend, t.pendEv = t.pend[:0], t.pendEv[:0]
	t.dirty = true
	if !idem {
		return nil
	}
	t.idem[p.Key] = *hash
	// Into the filter now, before the batch is handed to Pebble: a batch
	// that then fails leaves a stale "maybe", which costs only a lookup.
	t.l.idem.add(p.Key)
	t.kbuf = append(append(t.kbuf[:0], prefixIdem...), p.Key...)
	t.vbuf = idemRecord{hash: *hash, seq: first}.appendTo(t.vbuf[:0])
	return t.set(t.kbuf, t.vbuf)
}

func isSystem(id string) bool {
	return id == AccountMint || id == AccountPlatform || id == AccountBountyPool
}

// satAdd adds non-negative counters, saturating instead of wrapping.
func satAdd(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}
