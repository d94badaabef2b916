package ledger

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Sentinel errors; match them with errors.Is.
var (
	// ErrUnknownAccount: an account id that the ledger does not hold.
	ErrUnknownAccount = errors.New("ledger: unknown account")
	// ErrUnknownKey: an API key that is not issued, was revoked, or belongs to another account.
	ErrUnknownKey = errors.New("ledger: unknown api key")
	// ErrInsufficientFunds: a transfer or hold would take an account's
	// available balance (balance minus held) below zero; mint is exempt.
	ErrInsufficientFunds = errors.New("ledger: insufficient funds")
	// ErrConflict: an idempotency key or hold id was reused for something else.
	ErrConflict = errors.New("ledger: idempotency key reused with a different payload")
	// ErrInvalid: a malformed argument (empty key, negative amount, self-transfer, ...).
	ErrInvalid = errors.New("ledger: invalid argument")
	// ErrCorrupt: the store breaks a ledger invariant (balances do not sum to zero, bad record).
	ErrCorrupt = errors.New("ledger: corrupt store")
	// ErrClosed: the ledger was closed.
	ErrClosed = errors.New("ledger: closed")
	// ErrUnknownHold: a hold id that the ledger does not hold.
	ErrUnknownHold = errors.New("ledger: unknown hold")
	// ErrHoldClosed: the hold was voided or expired and cannot change.
	ErrHoldClosed = errors.New("ledger: hold closed")
	// ErrTampered: Verify found stored records that do not match the chain.
	ErrTampered = errors.New("ledger: tampered store")
	// ErrNotFound: Prove found no committed posting for the request id.
	ErrNotFound = errors.New("ledger: no such call")
	// ErrUnprovable: the posting was committed in a batch whose chain link
	// predates Merkle roots (a version 1 link), so it has no inclusion proof.
	ErrUnprovable = errors.New("ledger: committed before inclusion proofs")
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

// Signer signs chain link hashes. A libp2p crypto.PrivKey satisfies it.
type Signer interface {
	Sign(data []byte) ([]byte, error)
}

// Options configures Open. The zero value is usable.
type Options struct {
	// FS holds the store's files; nil means vfs.Default (the OS). Tests pass
	// vfs.NewMem() or vfs.NewCrashableMem().
	FS vfs.FS
	// Logger receives ledger and Pebble messages; nil discards them.
	Logger *slog.Logger
	// Now stamps account, transfer and chain records and is the clock holds
	// are created under; nil means time.Now. It never affects what is applied.
	Now func() time.Time
	// Signer signs every chain link; nil leaves links unsigned (they are
	// still hashed and chained).
	Signer Signer

	// linkVersion is the chain link format new batches get: 2 (with a
	// Merkle root) unless a test asks for the version 1 of earlier stores.
	linkVersion byte
}

// AccountState is an account's balance and counters.
type AccountState struct {
	ID      string `json:"account"`
	Balance int64  `json:"balance_ucr"`
	// Held is the part of Balance reserved by open holds.
	Held           int64     `json:"held_ucr"`
	Earned         int64     `json:"earned_ucr"`
	Spent          int64     `json:"spent_ucr"`
	Calls          int64     `json:"calls"`
	StartingCredit int64     `json:"starting_credit_ucr"`
	Created        time.Time `json:"created"`
}

// Available is what the account can spend or hold: Balance - Held.
func (s AccountState) Available() int64 { return s.Balance - s.Held }

// state is the ledger's in-memory state. The Ledger keeps two copies: the
// working state, which includes every batch handed to Pebble, and the
// published state, which includes only batches whose fsync has completed.
type state struct {
	accounts  map[string]AccountState
	holds     map[string]holdRec // open holds only
	nextSeq   uint64             // next transfer sequence number
	nextEvent uint64             // next hold event sequence number
	head      ChainLink          // latest chain link (Seq 0: none yet)
}

func newState() state {
	return state{accounts: map[string]AccountState{}, holds: map[string]holdRec{}, nextSeq: 1, nextEvent: 1}
}

func (s *state) clone() state {
	c := *s
	c.accounts = make(map[string]AccountState, len(s.accounts))
	for k, v := range s.accounts {
		c.accounts[k] = v
	}
	c.holds = make(map[string]holdRec, len(s.holds))
	for k, v := range s.holds {
		c.holds[k] = v
	}
	return c
}

// ticket orders the publication of committed batches: a batch publishes
// after the previous one has, and inherits its failure.
type ticket struct {
	done chan struct{}
	err  error // set before done is closed
}

// Ledger is a double-entry ledger stored in Pebble. It is safe for
// concurrent use.
type Ledger struct {
	db     *pebble.DB
	logger *slog.Logger
	now    func() time.Time
	signer Signer
	// linkVersion is the format of the chain links this ledger writes.
	linkVersion byte

	// wmu serialises writers. It guards w, tail, closed and txn reuse.
	wmu    sync.Mutex
	closed bool
	w      state   // working state
	tail   *ticket // the latest batch handed to Pebble
	// failed holds the first fsync error; every later write returns it.
	failed atomic.Pointer[error]
	// idem filters the idempotency keys in the store; guarded by wmu.
	idem *idemFilter

	// mu guards the published state; readers hold it shared. Close takes it
	// exclusively so no reader uses the DB while it closes.
	mu   sync.RWMutex
	pub  state
	keys map[string]keyRec // sha256 hex of an API key -> its account and description
	// acctKeys indexes keys by account: account -> key hashes.
	acctKeys map[string]map[string]struct{}
	nodes    map[string]string // peer id -> account

	txns sync.Pool // *txn

	// snapshots counts the snapshots proofs are being built from; Close
	// waits for them (Pebble refuses to close with one open).
	snapshots sync.WaitGroup
}

// pebbleOptions is the Pebble configuration of a ledger store.
func pebbleOptions(opts Options, readOnly bool) *pebble.Options {
	po := &pebble.Options{
		FS:       opts.FS,
		Logger:   pebbleLogger{opts.Logger.With("component", "pebble")},
		ReadOnly: readOnly,
		// A batch larger than half the memtable is committed as its own
		// flushable, forcing a flush per batch; PostBatch batches of
		// thousands of postings are several MB in the memtable.
		MemTableSize: 64 << 20,
	}
	if !readOnly {
		// The newest table format checksums sstable footers as well as blocks.
		po.FormatMajorVersion = pebble.FormatNewest
	}
	// Every posting looks up an idempotency key that usually does not exist;
	// bloom filters answer that without reading data blocks.
	for i := range po.Levels {
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	return po
}

func (o *Options) defaults() {
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.linkVersion == 0 {
		o.linkVersion = recordLinkV2
	}
}

// Open opens (creating if needed) the ledger in dir and loads its state into
// memory. On first open it creates the mint, platform and bounty_pool
// accounts. It fails with ErrCorrupt if the balances do not sum to zero or
// an account's Held does not match its open holds.
func Open(dir string, opts Options) (*Ledger, error) {
	opts.defaults()
	db, err := pebble.Open(dir, pebbleOptions(opts, false))
	if err != nil {
		return nil, fmt.Errorf("ledger: open %s: %w", dir, err)
	}
	l := &Ledger{
		db:          db,
		logger:      opts.Logger,
		now:         opts.Now,
		signer:      opts.Signer,
		linkVersion: opts.linkVersion,
		pub:         newState(),
		keys:        map[string]keyRec{},
		acctKeys:    map[string]map[string]struct{}{},
		nodes:       map[string]string{},
		tail:        &ticket{done: make(chan struct{})},
	}
	close(l.tail.done)
	if err := l.load(); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	if err := l.ensureSystemAccounts(); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	if err := checkState(&l.pub); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	l.w = l.pub.clone()
	l.logger.Info("ledger opened", "dir", dir, "accounts", len(l.pub.accounts),
		"next_seq", l.pub.nextSeq, "open_holds", len(l.pub.holds), "chain", l.pub.head.Seq)
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
	<-l.tail.done
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	l.snapshots.Wait()
	return l.db.Close()
}

// load reads every cached record from the store into the published state.
func (l *Ledger) load() error {
	s := &l.pub
	err := scanPrefix(l.db, prefixAccount, func(k string, v []byte) error {
		st, err := decodeAccount(v)
		if err != nil || st.ID != k {
			return fmt.Errorf("%w: account record %q", ErrCorrupt, k)
		}
		s.accounts[st.ID] = st
		return nil
	})
	if err == nil {
		err = scanPrefix(l.db, prefixHold, func(k string, v []byte) error {
			h, err := decodeHold(k, v)
			if err != nil {
				return fmt.Errorf("%w: hold record %q: %v", ErrCorrupt, k, err)
			}
			if !h.Closed {
				s.holds[k] = h
			}
			return nil
		})
	}
	if err == nil {
		descs := map[string][]byte{}
		err = scanPrefix(l.db, prefixKeyDesc, func(k string, v []byte) error {
			descs[k] = bytes.Clone(v)
			return nil
		})
		if err == nil {
			err = scanPrefix(l.db, prefixAPIKey, func(k string, v []byte) error {
				l.addKey(k, keyRec{account: string(v), info: decodeKeyInfo(k, descs[k])})
				return nil
			})
		}
	}
	if err == nil {
		err = scanPrefix(l.db, prefixNode, func(k string, v []byte) error {
			l.nodes[k] = string(v)
			return nil
		})
	}
	if err == nil {
		l.idem, err = loadIdemFilter(l.db)
	}
	if err != nil {
		return err
	}
	for key, dst := range map[string]*uint64{keyNextSeq: &s.nextSeq, keyNextEvent: &s.nextEvent} {
		if err := getSeq(l.db, key, dst); err != nil {
			return err
		}
	}
	if s.head, err = lastLink(l.db); err != nil {
		return err
	}
	for k, rec := range l.keys {
		if _, ok := s.accounts[rec.account]; !ok {
			return fmt.Errorf("%w: api key %s… points at unknown account %q", ErrCorrupt, k[:min(8, len(k))], rec.account)
		}
	}
	for peer, acct := range l.nodes {
		if _, ok := s.accounts[acct]; !ok {
			return fmt.Errorf("%w: node %q points at unknown account %q", ErrCorrupt, peer, acct)
		}
	}
	return nil
}

// scanPrefix calls fn for every record whose key starts with prefix, with
// the key minus the prefix. v is only valid during the call.
func scanPrefix(db pebble.Reader, prefix string, fn func(k string, v []byte) error) error {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefix), UpperBound: prefixEnd(prefix)})
	if err != nil {
		return fmt.Errorf("ledger: scan %s: %w", prefix, err)
	}
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err == nil {
			err = fn(string(it.Key()[len(prefix):]), v)
		}
		if err != nil {
			return errors.Join(err, it.Close())
		}
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return fmt.Errorf("ledger: scan %s: %w", prefix, err)
	}
	return nil
}

// getSeq reads a sequence counter; a missing one leaves *dst unchanged.
func getSeq(db pebble.Reader, key string, dst *uint64) error {
	v, closer, err := db.Get([]byte(key))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ledger: read %s: %w", key, err)
	}
	defer closer.Close()
	*dst, err = decodeSeq(v)
	return err
}

// lastLink returns the newest chain link, or a zero link if there is none.
func lastLink(db pebble.Reader) (ChainLink, error) {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixLink), UpperBound: prefixEnd(prefixLink)})
	if err != nil {
		return ChainLink{}, fmt.Errorf("ledger: read chain head: %w", err)
	}
	defer it.Close()
	if !it.Last() {
		return ChainLink{}, it.Error()
	}
	c, err := decodeLink(it.Value())
	if err != nil {
		return ChainLink{}, fmt.Errorf("%w: chain link %q: %v", ErrCorrupt, it.Key(), err)
	}
	return c, nil
}

func (l *Ledger) ensureSystemAccounts() error {
	b := l.db.NewBatch()
	defer b.Close()
	created := map[string]AccountState{}
	for _, id := range []string{AccountMint, AccountPlatform, AccountBountyPool} {
		if _, ok := l.pub.accounts[id]; ok {
			continue
		}
		st := AccountState{ID: id, Created: l.now().UTC()}
		if err := b.Set(accountKey(id), appendAccount(nil, &st), nil); err != nil {
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
		l.pub.accounts[id] = st
	}
	return nil
}

// checkState verifies a state's invariants: balances sum to zero, only mint
// is negative, and every account's Held is the sum of its open holds'
// Remaining and at most its Balance.
func checkState(s *state) error {
	var sum int64
	held := map[string]int64{}
	for id, h := range s.holds {
		if h.Remaining < 0 || h.Remaining > h.Amount {
			return fmt.Errorf("%w: hold %q has remaining %d of %d", ErrCorrupt, id, h.Remaining, h.Amount)
		}
		held[h.Account] += h.Remaining
	}
	for id, st := range s.accounts {
		if st.Balance < 0 && id != AccountMint {
			return fmt.Errorf("%w: account %q has negative balance %d", ErrCorrupt, id, st.Balance)
		}
		if st.Held != held[id] || st.Held < 0 || st.Held > 0 && st.Held > st.Balance {
			return fmt.Errorf("%w: account %q holds %d of balance %d, its open holds %d",
				ErrCorrupt, id, st.Held, st.Balance, held[id])
		}
		delete(held, id)
		sum += st.Balance
	}
	for id := range held {
		return fmt.Errorf("%w: open hold on unknown account %q", ErrCorrupt, id)
	}
	if sum != 0 {
		return fmt.Errorf("%w: balances sum to %d, not 0", ErrCorrupt, sum)
	}
	return nil
}

// writable reports why the ledger cannot take a write. Called with wmu held.
func (l *Ledger) writable() error {
	if l.closed {
		return ErrClosed
	}
	if p := l.failed.Load(); p != nil {
		return fmt.Errorf("ledger: unusable after a failed commit, reopen it: %w", *p)
	}
	return nil
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
