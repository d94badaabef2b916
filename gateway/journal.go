package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// Journal keeps every receipt this gateway signed until the settlement
// peer has acknowledged it, so a gateway that crashes or restarts, or a
// settlement outage, loses no bill. Keys: "r/<request id>" pending,
// "x/<request id>" refused by settlement (kept for the operator to inspect).
type Journal struct {
	mu     sync.RWMutex // writers hold it shared; Close takes it whole
	closed bool
	db     *pebble.DB
}

// ErrJournalClosed is returned by writes after Close.
var ErrJournalClosed = errors.New("gateway: receipt journal closed")

// use runs f on the open database, or fails if the journal is closed.
func (j *Journal) use(f func(*pebble.DB) error) error {
	if j == nil {
		return nil
	}
	j.mu.RLock()
	defer j.mu.RUnlock()
	if j.closed {
		return ErrJournalClosed
	}
	return f(j.db)
}

// OpenJournal opens (or creates) the journal in dir; fs nil means the disk.
func OpenJournal(dir string, fs vfs.FS) (*Journal, error) {
	if fs == nil {
		fs = vfs.Default
	}
	db, err := pebble.Open(dir, &pebble.Options{FS: fs, Logger: quietLogger{}})
	if err != nil {
		return nil, fmt.Errorf("gateway: open receipt journal: %w", err)
	}
	return &Journal{db: db}, nil
}

// Close closes the journal.
func (j *Journal) Close() error {
	if j == nil {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil
	}
	j.closed = true
	return j.db.Close()
}

// Put records a receipt durably (fsync'd) before it is sent.
func (j *Journal) Put(r *p2p.Receipt) error {
	if j == nil {
		return nil
	}
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return j.use(func(db *pebble.DB) error { return db.Set([]byte("r/"+r.RequestID), data, pebble.Sync) })
}

// Done forgets receipts settlement acknowledged, in one batch.
func (j *Journal) Done(requestIDs ...string) error {
	if j == nil || len(requestIDs) == 0 {
		return nil
	}
	return j.use(func(db *pebble.DB) error {
		b := db.NewBatch()
		for _, id := range requestIDs {
			b.Delete([]byte("r/"+id), nil)
		}
		return b.Commit(pebble.NoSync)
	})
}

// Refused moves a receipt settlement refused on its merits out of the
// pending set, keeping it for inspection.
func (j *Journal) Refused(r *p2p.Receipt, reason string) error {
	if j == nil {
		return nil
	}
	data, _ := json.Marshal(struct {
		Receipt *p2p.Receipt `json:"receipt"`
		Reason  string       `json:"reason"`
	}{r, reason})
	return j.use(func(db *pebble.DB) error {
		b := db.NewBatch()
		b.Delete([]byte("r/"+r.RequestID), nil)
		b.Set([]byte("x/"+r.RequestID), data, nil)
		return b.Commit(pebble.Sync)
	})
}

// Pending returns every receipt not yet acknowledged.
func (j *Journal) Pending() ([]*p2p.Receipt, error) {
	if j == nil {
		return nil, nil
	}
	var out []*p2p.Receipt
	err := j.use(func(db *pebble.DB) error {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte("r/"), UpperBound: []byte("r0")})
		if err != nil {
			return err
		}
		defer it.Close()
		for it.First(); it.Valid(); it.Next() {
			var r p2p.Receipt
			if err := json.Unmarshal(it.Value(), &r); err != nil {
				return errors.Join(fmt.Errorf("gateway: journal entry %q is damaged", it.Key()), err)
			}
			out = append(out, &r)
		}
		return it.Error()
	})
	return out, err
}

// quietLogger keeps Pebble's informational chatter out of the logs; a fatal
// error still stops the process.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf("gateway journal: "+format, args...))
}
