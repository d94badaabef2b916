package ledger

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"
)

// HoldState is a two-phase reservation of an account's money (like a
// TigerBeetle pending transfer): Amount µcr were reserved, Remaining of them
// are still reserved (postings naming the hold draw from it), and a closed
// hold (voided or expired) reserves nothing.
type HoldState struct {
	ID        string    `json:"id"`
	Account   string    `json:"account"`
	Holder    string    `json:"holder"`
	Amount    int64     `json:"amount_ucr"`
	Remaining int64     `json:"remaining_ucr"`
	Expires   time.Time `json:"expires"`
	Closed    bool      `json:"closed"`
}

// maxHoldID bounds a hold id (it is part of a Pebble key).
const maxHoldID = 1024

// Hold reserves amount of account's available balance under id for holder
// (e.g. the gateway forwarding a call), until expires. The reservation, the
// hold record and a chain link are committed in one synced batch.
//
// Hold is idempotent by id: the same id with the same account and holder
// returns the existing hold unchanged (even if closed); with another account
// or holder it is ErrConflict. An empty or over-long id, amount <= 0, a zero
// expiry or a system account (mint, platform, bounty_pool) is ErrInvalid;
// an unknown account is ErrUnknownAccount; an available balance below
// amount is ErrInsufficientFunds.
func (l *Ledger) Hold(id, account, holder string, amount int64, expires time.Time) (HoldState, error) {
	switch {
	case id == "" || len(id) > maxHoldID:
		return HoldState{}, fmt.Errorf("%w: hold id of %d bytes", ErrInvalid, len(id))
	case amount <= 0:
		return HoldState{}, fmt.Errorf("%w: hold amount %d", ErrInvalid, amount)
	case isSystem(account):
		return HoldState{}, fmt.Errorf("%w: hold on system account %q", ErrInvalid, account)
	case expires.IsZero():
		return HoldState{}, fmt.Errorf("%w: hold without expiry", ErrInvalid)
	}
	var out HoldState
	err := l.run(func(t *txn) error {
		if i, err := t.hold(id); err == nil {
			h := t.holds.vals[i]
			if h.Account != account || h.Holder != holder {
				return fmt.Errorf("%w: hold %q is on %q for %q", ErrConflict, id, h.Account, h.Holder)
			}
			out = h.HoldState
			return nil
		} else if !isUnknownHold(err) {
			return err
		}
		if _, ok := t.l.w.accounts[account]; !ok {
			return fmt.Errorf("%w: %q", ErrUnknownAccount, account)
		}
		ai, _ := t.acct(account)
		a := t.accts.at(ai)
		if a.Available() < amount {
			return fmt.Errorf("%w: %q has %d µcr available, hold needs %d", ErrInsufficientFunds, account, a.Available(), amount)
		}
		a.Held += amount
		h := holdRec{HoldState: HoldState{ID: id, Account: account, Holder: holder,
			Amount: amount, Remaining: amount, Expires: expires.UTC()}}
		i := t.holds.add(id, h)
		out = h.HoldState
		return t.addEvent(i, holdEvent{Kind: evCreate, Hold: id, Account: account, Holder: holder, Delta: amount, Expires: unixNano(h.Expires)})
	})
	return out, err
}

// ExtendHold reserves add (>= 0) more µcr under an open hold, from the
// account's available balance, and moves its expiry to expires if that is
// later (never earlier). Unknown id: ErrUnknownHold; closed hold:
// ErrHoldClosed; not enough available: ErrInsufficientFunds.
func (l *Ledger) ExtendHold(id string, add int64, expires time.Time) (HoldState, error) {
	if add < 0 {
		return HoldState{}, fmt.Errorf("%w: negative hold extension %d", ErrInvalid, add)
	}
	var out HoldState
	err := l.run(func(t *txn) error {
		i, err := t.hold(id)
		if err != nil {
			return err
		}
		h := t.holds.at(i)
		if h.Closed {
			return fmt.Errorf("%w: %q", ErrHoldClosed, id)
		}
		later := expires.After(h.Expires)
		if add == 0 && !later {
			out = h.HoldState
			return nil
		}
		ai, err := t.acct(h.Account)
		if err != nil {
			return err
		}
		a := t.accts.at(ai)
		if a.Available() < add {
			return fmt.Errorf("%w: %q has %d µcr available, extension needs %d", ErrInsufficientFunds, a.ID, a.Available(), add)
		}
		a.Held += add
		h.Amount += add
		h.Remaining += add
		if later {
			h.Expires = expires.UTC()
		}
		out = h.HoldState
		return t.addEvent(i, holdEvent{Kind: evExtend, Hold: id, Account: h.Account, Delta: add, Expires: unixNano(h.Expires)})
	})
	return out, err
}

// VoidHold closes a hold, releasing its Remaining to the account's available
// balance. Voiding a closed hold returns its state and changes nothing.
// Unknown id: ErrUnknownHold.
func (l *Ledger) VoidHold(id string) (HoldState, error) {
	var out HoldState
	err := l.run(func(t *txn) error {
		i, err := t.hold(id)
		if err != nil {
			return err
		}
		if h := t.holds.vals[i]; h.Closed {
			out = h.HoldState
			return nil
		}
		if err := t.closeHold(i, evVoid); err != nil {
			return err
		}
		out = t.holds.vals[i].HoldState
		return nil
	})
	return out, err
}

// ExpireHolds voids every open hold whose expiry is at or before now, in one
// batch, and returns how many it closed.
func (l *Ledger) ExpireHolds(now time.Time) (int, error) {
	n := 0
	err := l.run(func(t *txn) error {
		var due []string
		for id, h := range t.l.w.holds {
			if !h.Expires.After(now) {
				due = append(due, id)
			}
		}
		slices.Sort(due)
		for _, id := range due {
			i, err := t.hold(id)
			if err != nil {
				return err
			}
			if err := t.closeHold(i, evExpire); err != nil {
				return err
			}
		}
		n = len(due)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// closeHold releases hold i's Remaining and closes it.
func (t *txn) closeHold(i int, kind byte) error {
	h := t.holds.at(i)
	ai, err := t.acct(h.Account)
	if err != nil {
		return err
	}
	released := h.Remaining
	t.accts.at(ai).Held -= released
	h.Remaining = 0
	h.Closed = true
	return t.addEvent(i, holdEvent{Kind: kind, Hold: h.ID, Account: h.Account, Delta: -released,
		Closed: true, Expires: unixNano(h.Expires)})
}

// HoldInfo returns a hold's durable state.
func (l *Ledger) HoldInfo(id string) (HoldState, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if h, ok := l.pub.holds[id]; ok {
		return h.HoldState, true
	}
	if l.closed || id == "" {
		return HoldState{}, false
	}
	// Closed holds are only on disk. A record whose latest event is not yet
	// published belongs to a batch still waiting for its fsync.
	h, found, err := readHold(l.db, id)
	if err != nil || !found || h.lastEvent >= l.pub.nextEvent || !h.Closed {
		return HoldState{}, false
	}
	return h.HoldState, true
}

// Holds returns the open holds on account, sorted by id.
func (l *Ledger) Holds(account string) []HoldState {
	l.mu.RLock()
	defer l.mu.RUnlock()
	var out []HoldState
	for _, h := range l.pub.holds {
		if h.Account == account {
			out = append(out, h.HoldState)
		}
	}
	slices.SortFunc(out, func(a, b HoldState) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

func isUnknownHold(err error) bool { return errors.Is(err, ErrUnknownHold) }
