package ledger

import (
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Side records: the settlement peer's bookkeeping that moves no money and
// is not part of the chain (node claims waiting for their gateway's
// receipt, calls billed from a claim alone, dispute counts). They live in
// the ledger's store under z/ so one directory holds everything, and
// Verify ignores them.
const prefixSide = "z/"

// PutSide writes side records and fsyncs them before it returns: what the
// settlement peer acknowledges from them survives a crash.
func (l *Ledger) PutSide(kvs map[string][]byte) error { return l.putSide(kvs, pebble.Sync) }

// PutSideNoSync writes side records without waiting for an fsync: the next
// synced write (the ledger's own commits) makes them durable.
func (l *Ledger) PutSideNoSync(kvs map[string][]byte) error { return l.putSide(kvs, pebble.NoSync) }

func (l *Ledger) putSide(kvs map[string][]byte, opts *pebble.WriteOptions) error {
	if len(kvs) == 0 {
		return nil
	}
	b := l.db.NewBatch()
	defer b.Close()
	for k, v := range kvs {
		if err := b.Set([]byte(prefixSide+k), v, nil); err != nil {
			return fmt.Errorf("ledger: side record: %w", err)
		}
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	if err := b.Commit(opts); err != nil {
		return fmt.Errorf("ledger: side records: %w", err)
	}
	return nil
}

// DeleteSide removes side records, without waiting for an fsync: a delete
// lost in a crash leaves a record whose purpose is already served (the
// caller must treat a stale one as harmless).
func (l *Ledger) DeleteSide(keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	b := l.db.NewBatch()
	defer b.Close()
	for _, k := range keys {
		if err := b.Delete([]byte(prefixSide+k), nil); err != nil {
			return fmt.Errorf("ledger: side record: %w", err)
		}
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	return b.Commit(pebble.NoSync)
}

// ScanSide calls fn with every side record under prefix (the key without
// the prefix).
func (l *Ledger) ScanSide(prefix string, fn func(key string, value []byte) error) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	return scanPrefix(l.db, prefixSide+prefix, fn)
}

// Posted reports whether a posting with idempotency key key is in the
// ledger (a replay of it would be a duplicate or a conflict). It reads the
// store without the writers' lock: a posting handed to Pebble and not yet
// synced counts as posted (its writer's caller is not yet acknowledged,
// and retries if the fsync fails).
func (l *Ledger) Posted(key string) (bool, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return false, ErrClosed
	}
	_, found, err := lookupIdem(l.db, idemKey(key))
	return found, err
}
