package ledger

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Sentinel errors; match them with errors.Is.
var (
	// ErrUnknownAccount: an account id that the ledger does not hold.
	ErrUnknownAccount = errors.New("ledger: unknown account")
	// ErrUnknownKey: an API key that is not issued, was revoked, or belongs to another account.
	ErrUnknownKey = errors.New("ledger: unknown api key")
	// ErrInsufficientFunds: a transfer would take an account other than mint below zero.
	ErrInsufficientFunds = errors.New("ledger: insufficient funds")
	// ErrConflict: an idempotency key was reused with a different payload.
	ErrConflict = errors.New("ledger: idempotency key reused with a different payload")
	// ErrInvalid: a malformed argument (empty key, negative amount, self-transfer, ...).
	ErrInvalid = errors.New("ledger: invalid argument")
	// ErrCorrupt: the store breaks a ledger invariant (balances do not sum to zero, bad record).
	ErrCorrupt = errors.New("ledger: corrupt store")
	// ErrClosed: the ledger was closed.
	ErrClosed = errors.New("ledger: closed")
)

// System accounts, created on first Open.
const (
	// AccountMint issues money; the only account allowed a negative balance.
	AccountMint = "mint"
	// AccountPlatform receives the platform's share of every call.
	AccountPlatform = "platform"
	// AccountBountyPool holds platform money set aside for bounties.
	AccountBountyPool = "bounty_pool"
)

// NodeAccountPrefix starts the id of an account Post creates on the fly for a
// provider node that is not linked to any user account.
const NodeAccountPrefix = "node:"

// Options configures Open. The zero value is usable.
type Options struct {
	// FS holds the store's files; nil means vfs.Default (the OS). Tests pass
	// vfs.NewMem() or vfs.NewCrashableMem().
	FS vfs.FS
	// Logger receives ledger and Pebble messages; nil discards them.
	Logger *slog.Logger
	// Now stamps account and transfer records; nil means time.Now. It never
	// affects what is applied.
	Now func() time.Time
}

// AccountState is an account's balance and counters.
type AccountState struct {
	ID             string    `json:"account"`
	Balance        int64     `json:"balance_ucr"`
	Earned         int64     `json:"earned_ucr"`
	Spent          int64     `json:"spent_ucr"`
	Calls          int64     `json:"calls"`
	StartingCredit int64     `json:"starting_credit_ucr"`
	Created        time.Time `json:"created"`
}

// Ledger is a double-entry ledger stored in Pebble. It is safe for
// concurrent use.
type Ledger struct {
	db     *pebble.DB
	logger *slog.Logger
	now    func() time.Time

	// wmu serialises writers. A writer reads the cache fields below without
	// mu (only writers change them) and takes mu to publish after its commit.
	wmu    sync.Mutex
	closed bool

	// mu guards the cache; readers hold it shared. Close takes it exclusively
	// so no reader uses the DB while it closes.
	mu       sync.RWMutex
	accounts map[string]AccountState
	keys     map[string]string // sha256 hex of an API key -> account
	nodes    map[string]string // peer id -> account
	// nextSeq is the next transfer sequence number. It advances only after a
	// commit returns, so every transfer with seq < nextSeq is durable.
	nextSeq uint64
}

// Open opens (creating if needed) the ledger in dir and loads its state into
// memory. On first open it creates the mint, platform and bounty_pool
// accounts. It fails with ErrCorrupt if the balances do not sum to zero.
func Open(dir string, opts Options) (*Ledger, error) {
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	db, err := pebble.Open(dir, &pebble.Options{
		FS:     opts.FS,
		Logger: pebbleLogger{opts.Logger.With("component", "pebble")},
	})
	if err != nil {
		return nil, fmt.Errorf("ledger: open %s: %w", dir, err)
	}
	l := &Ledger{
		db:       db,
		logger:   opts.Logger,
		now:      opts.Now,
		accounts: map[string]AccountState{},
		keys:     map[string]string{},
		nodes:    map[string]string{},
	}
	if err := l.load(); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	if err := l.ensureSystemAccounts(); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	if err := l.checkBalances(); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	l.logger.Info("ledger opened", "dir", dir, "accounts", len(l.accounts), "next_seq", l.nextSeq)
	return l, nil
}

// Close waits for in-flight writes and closes the store. Later writes fail
// with ErrClosed; cached reads keep working.
func (l *Ledger) Close() error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.closed {
		return ErrClosed
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	return l.db.Close()
}

// load reads every cached record from the store.
func (l *Ledger) load() error {
	it, err := l.db.NewIter(nil)
	if err != nil {
		return fmt.Errorf("ledger: load: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k, v := string(it.Key()), it.Value()
		switch {
		case strings.HasPrefix(k, prefixAccount):
			var st AccountState
			if err := json.Unmarshal(v, &st); err != nil || st.ID != k[len(prefixAccount):] {
				return fmt.Errorf("%w: account record %q", ErrCorrupt, k)
			}
			l.accounts[st.ID] = st
		case strings.HasPrefix(k, prefixAPIKey):
			l.keys[k[len(prefixAPIKey):]] = string(v)
		case strings.HasPrefix(k, prefixNode):
			l.nodes[k[len(prefixNode):]] = string(v)
		case k == keyNextSeq:
			if l.nextSeq, err = decodeSeq(v); err != nil {
				return err
			}
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("ledger: load: %w", err)
	}
	if l.nextSeq == 0 {
		l.nextSeq = 1 // sequence numbers start at 1
	}
	for k, acct := range l.keys {
		if _, ok := l.accounts[acct]; !ok {
			return fmt.Errorf("%w: api key %s… points at unknown account %q", ErrCorrupt, k[:8], acct)
		}
	}
	for peer, acct := range l.nodes {
		if _, ok := l.accounts[acct]; !ok {
			return fmt.Errorf("%w: node %q points at unknown account %q", ErrCorrupt, peer, acct)
		}
	}
	return nil
}

func (l *Ledger) ensureSystemAccounts() error {
	b := l.db.NewBatch()
	defer b.Close()
	created := map[string]AccountState{}
	for _, id := range []string{AccountMint, AccountPlatform, AccountBountyPool} {
		if _, ok := l.accounts[id]; ok {
			continue
		}
		st := AccountState{ID: id, Created: l.now().UTC()}
		if err := setAccount(b, st); err != nil {
			return err
		}
		created[id] = st
	}
	if len(created) == 0 {
		return nil
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("ledger: create system accounts: %w", err)
	}
	for id, st := range created {
		l.accounts[id] = st
	}
	return nil
}

// checkBalances verifies the cached balances: they sum to zero and only mint
// is negative.
func (l *Ledger) checkBalances() error {
	var sum int64
	for id, st := range l.accounts {
		if st.Balance < 0 && id != AccountMint {
			return fmt.Errorf("%w: account %q has negative balance %d", ErrCorrupt, id, st.Balance)
		}
		sum += st.Balance
	}
	if sum != 0 {
		return fmt.Errorf("%w: balances sum to %d, not 0", ErrCorrupt, sum)
	}
	return nil
}

// setAccount writes an account state record into b.
func setAccount(b *pebble.Batch, st AccountState) error {
	v, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("ledger: encode account %q: %w", st.ID, err)
	}
	return b.Set(accountKey(st.ID), v, nil)
}

// validAccountID reports whether id can name an account: non-empty, no '/'
// (it would break the x/<account>/ index), no control characters.
func validAccountID(id string) bool {
	if id == "" || len(id) > 256 {
		return false
	}
	return !strings.ContainsFunc(id, func(r rune) bool { return r == '/' || r < 0x20 || r == 0x7f })
}

// pebbleLogger adapts an slog.Logger to pebble.Logger.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...))
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...))
}

// Fatalf logs and panics: Pebble calls it on a broken internal invariant and
// does not expect it to return.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error(msg)
	panic("pebble: " + msg)
}
