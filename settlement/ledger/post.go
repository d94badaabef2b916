package ledger

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

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
}

// Post applies all of p's transfers atomically — transfers, balances,
// counters and the idempotency record in one pebble batch committed with
// pebble.Sync — or none of them. It returns applied=true when it applied
// the posting now.
//
// Re-posting a Key with the same payload returns (false, nil) and changes
// nothing; the same Key with a different payload returns ErrConflict.
// Transfers apply in order, and one that would take any account other than
// mint below zero fails the whole posting with ErrInsufficientFunds (the key
// is not recorded, so a later retry can succeed). Unknown accounts give
// ErrUnknownAccount, except that an id starting with "node:" is created with
// a zero balance (a provider not linked to any account). A negative amount,
// a self-transfer, an empty kind or an empty key give ErrInvalid.
//
// Counters: the receiving user account of a "call" or "bounty" transfer gets
// Earned += amount; the paying user account of a "call" transfer gets
// Spent += amount; Consumer gets Calls += 1. System accounts (mint, platform,
// bounty_pool) keep no counters.
func (l *Ledger) Post(p Posting) (applied bool, err error) {
	if p.Key == "" {
		return false, fmt.Errorf("%w: posting without a key", ErrInvalid)
	}
	if err := validateTransfers(p.Transfers); err != nil {
		return false, err
	}
	hash := sha256.Sum256(p.Payload)

	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.closed {
		return false, ErrClosed
	}

	prev, found, err := l.lookupIdem(p.Key)
	if err != nil {
		return false, err
	}
	if found {
		if prev.hash != hash {
			return false, fmt.Errorf("%w: key %q", ErrConflict, p.Key)
		}
		return false, nil
	}

	now := l.now().UTC()
	w := l.newWork(now)
	if err := w.apply(p.Key, p.Transfers); err != nil {
		return false, err
	}
	if p.Consumer != "" {
		st, err := w.get(p.Consumer)
		if err != nil {
			return false, err
		}
		st.Calls++
		w.put(st)
	}
	b := l.db.NewBatch()
	defer b.Close()
	if err := w.write(b); err != nil {
		return false, err
	}
	rec := idemRecord{hash: hash, seq: l.nextSeq}
	if err := b.Set(idemKey(p.Key), rec.encode(), nil); err != nil {
		return false, err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return false, fmt.Errorf("ledger: commit posting %q: %w", p.Key, err)
	}
	l.publish(w)
	return true, nil
}

// validateTransfers checks what can be checked without state.
func validateTransfers(ts []Transfer) error {
	for i, t := range ts {
		switch {
		case t.Amount < 0:
			return fmt.Errorf("%w: transfer %d: negative amount %d", ErrInvalid, i, t.Amount)
		case t.Kind == "":
			return fmt.Errorf("%w: transfer %d: empty kind", ErrInvalid, i)
		case t.From == t.To:
			return fmt.Errorf("%w: transfer %d: from and to are both %q", ErrInvalid, i, t.From)
		}
	}
	return nil
}

// lookupIdem reads an idempotency record. Writers hold wmu, so everything
// visible was committed by a call that has returned.
func (l *Ledger) lookupIdem(key string) (idemRecord, bool, error) {
	v, closer, err := l.db.Get(idemKey(key))
	if errors.Is(err, pebble.ErrNotFound) {
		return idemRecord{}, false, nil
	}
	if err != nil {
		return idemRecord{}, false, fmt.Errorf("ledger: read key %q: %w", key, err)
	}
	defer closer.Close()
	rec, err := decodeIdem(v)
	return rec, err == nil, err
}

// work is a write in preparation: copies of the account states it changes
// and the transfer records it adds. Nothing in the Ledger changes until
// publish, after the batch commits.
type work struct {
	l        *Ledger
	now      time.Time
	accounts map[string]AccountState
	order    []string // account ids in first-touched order, for deterministic batches
	records  []TxRecord
	nextSeq  uint64
}

func (l *Ledger) newWork(now time.Time) *work {
	return &work{l: l, now: now, accounts: map[string]AccountState{}, nextSeq: l.nextSeq}
}

// get returns the working state of id, creating a "node:" account on demand.
func (w *work) get(id string) (AccountState, error) {
	if st, ok := w.accounts[id]; ok {
		return st, nil
	}
	if st, ok := w.l.accounts[id]; ok {
		return st, nil
	}
	if strings.HasPrefix(id, NodeAccountPrefix) && len(id) > len(NodeAccountPrefix) && validAccountID(id) {
		return AccountState{ID: id, Created: w.now}, nil
	}
	return AccountState{}, fmt.Errorf("%w: %q", ErrUnknownAccount, id)
}

func (w *work) put(st AccountState) {
	if _, ok := w.accounts[st.ID]; !ok {
		w.order = append(w.order, st.ID)
	}
	w.accounts[st.ID] = st
}

// apply moves money for each transfer in order, checking funds after each.
func (w *work) apply(ref string, ts []Transfer) error {
	for i, t := range ts {
		if t.Amount == 0 {
			continue
		}
		from, err := w.get(t.From)
		if err != nil {
			return err
		}
		to, err := w.get(t.To)
		if err != nil {
			return err
		}
		if from.ID != AccountMint && from.Balance < t.Amount {
			return fmt.Errorf("%w: transfer %d: %q has %d µcr, needs %d",
				ErrInsufficientFunds, i, from.ID, from.Balance, t.Amount)
		}
		if from.Balance < math.MinInt64+t.Amount || to.Balance > math.MaxInt64-t.Amount {
			return fmt.Errorf("%w: transfer %d: balance overflow", ErrInvalid, i)
		}
		from.Balance -= t.Amount
		to.Balance += t.Amount
		if !isSystem(to.ID) && (t.Kind == KindCall || t.Kind == KindBounty) {
			to.Earned = satAdd(to.Earned, t.Amount)
		}
		if !isSystem(from.ID) && t.Kind == KindCall {
			from.Spent = satAdd(from.Spent, t.Amount)
		}
		w.put(from)
		w.put(to)
		w.records = append(w.records, TxRecord{
			Seq: w.nextSeq, Key: ref, From: t.From, To: t.To, Amount: t.Amount, Kind: t.Kind, Time: w.now,
		})
		w.nextSeq++
	}
	return nil
}

// write adds every record of w to b.
func (w *work) write(b *pebble.Batch) error {
	for _, id := range w.order {
		if err := setAccount(b, w.accounts[id]); err != nil {
			return err
		}
	}
	for _, r := range w.records {
		v, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("ledger: encode transfer %d: %w", r.Seq, err)
		}
		if err := b.Set(txKey(r.Seq), v, nil); err != nil {
			return err
		}
		if err := b.Set(indexKey(r.From, r.Seq), nil, nil); err != nil {
			return err
		}
		if err := b.Set(indexKey(r.To, r.Seq), nil, nil); err != nil {
			return err
		}
	}
	if w.nextSeq != w.l.nextSeq {
		return b.Set([]byte(keyNextSeq), encodeSeq(w.nextSeq), nil)
	}
	return nil
}

// publish installs a committed work into the cache.
func (l *Ledger) publish(w *work) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, st := range w.accounts {
		l.accounts[id] = st
	}
	l.nextSeq = w.nextSeq
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
