package ledger

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Page sizes for Transactions.
const (
	// DefaultTxPageSize is used when Transactions is given limit <= 0.
	DefaultTxPageSize = 50
	// MaxTxPageSize caps one page, keeping a request's disk reads bounded.
	MaxTxPageSize = 1000
)

// TxRecord is one applied transfer, as stored in its posting's record
// t/<seq of the posting's first transfer>.
type TxRecord struct {
	// Seq numbers transfers in commit order, from 1.
	Seq uint64 `json:"seq"`
	// ID is Key + "/" + the transfer's leg (or its index in the posting),
	// unique across the ledger.
	ID string `json:"id"`
	// Key is the posting's idempotency key (e.g. the request id), or
	// "grant:<account>" for a starting grant.
	Key    string    `json:"ref"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	Amount int64     `json:"amount_ucr"`
	Kind   string    `json:"kind"`
	Time   time.Time `json:"time"`
}

// Transactions lists the transfers into or out of account, newest first.
// cursor "" starts at the newest; otherwise pass the cursor a previous call
// returned. It returns at most limit records (DefaultTxPageSize if limit <= 0,
// at most MaxTxPageSize) and the cursor of the next page, "" at the end.
// Only durable transfers are listed. A malformed cursor is ErrInvalid.
func (l *Ledger) Transactions(account, cursor string, limit int) ([]TxRecord, string, error) {
	if limit <= 0 {
		limit = DefaultTxPageSize
	}
	limit = min(limit, MaxTxPageSize)

	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, "", ErrClosed
	}
	if _, ok := l.pub.accounts[account]; !ok {
		return nil, "", fmt.Errorf("%w: %q", ErrUnknownAccount, account)
	}
	// Transfers at or past nextSeq may be in Pebble but not yet synced.
	before := l.pub.nextSeq
	if cursor != "" {
		seq, err := parseSeq(cursor)
		if err != nil {
			return nil, "", fmt.Errorf("%w: cursor: %v", ErrInvalid, err)
		}
		before = min(seq, before)
	}

	prefix := indexPrefix(account)
	it, err := l.db.NewIter(&pebble.IterOptions{
		LowerBound: []byte(prefix),
		UpperBound: indexKey(account, before),
	})
	if err != nil {
		return nil, "", fmt.Errorf("ledger: transactions: %w", err)
	}
	defer it.Close()
	txs, err := l.newTxReader()
	if err != nil {
		return nil, "", fmt.Errorf("ledger: transactions: %w", err)
	}
	defer txs.it.Close()

	var out []TxRecord
	var seqs []uint64
	next := ""
scan:
	for valid := it.Last(); valid; valid = it.Prev() {
		seq, err := parseSeq(string(it.Key()[len(prefix):]))
		if err == nil {
			var v []byte
			if v, err = it.ValueAndErr(); err == nil {
				seqs, err = decodeIndexValue(seqs[:0], seq, v)
			}
		}
		if err != nil {
			return nil, "", fmt.Errorf("%w: index record %q: %v", ErrCorrupt, it.Key(), err)
		}
		for i := len(seqs) - 1; i >= 0; i-- {
			if seqs[i] >= before {
				continue // not yet durable, or not before the cursor
			}
			if len(out) == limit {
				next = seqString(out[len(out)-1].Seq)
				break scan
			}
			rec, err := txs.read(seqs[i])
			if err != nil {
				return nil, "", err
			}
			out = append(out, rec)
		}
	}
	if err := it.Error(); err != nil {
		return nil, "", fmt.Errorf("ledger: transactions: %w", err)
	}
	return out, next, nil
}

// txReader reads transfers by sequence number from their posting records,
// keeping the last record it decoded: the transfers of a posting are
// usually read one after another.
type txReader struct {
	it   *pebble.Iterator
	rec  postingRec
	kbuf []byte
}

func (l *Ledger) newTxReader() (*txReader, error) {
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixTx), UpperBound: prefixEnd(prefixTx)})
	if err != nil {
		return nil, err
	}
	return &txReader{it: it}, nil
}

// read returns transfer seq, from the record with the greatest key at or
// before t/<seq>.
func (r *txReader) read(seq uint64) (TxRecord, error) {
	if !r.rec.covers(seq) {
		r.kbuf = appendSeqKey(r.kbuf[:0], prefixTx, seq+1)
		if !r.it.SeekLT(r.kbuf) {
			if err := r.it.Error(); err != nil {
				return TxRecord{}, fmt.Errorf("ledger: read transfer %d: %w", seq, err)
			}
			return TxRecord{}, fmt.Errorf("%w: transfer %d: no record", ErrCorrupt, seq)
		}
		first, err := parseSeq(string(r.it.Key()[len(prefixTx):]))
		var v []byte
		if err == nil {
			v, err = r.it.ValueAndErr()
		}
		if err == nil {
			err = decodePosting(first, v, &r.rec)
		}
		if err == nil && r.rec.first != first {
			err = fmt.Errorf("record %d says it starts at %d", first, r.rec.first)
		}
		if err != nil {
			r.rec.txs = r.rec.txs[:0]
			return TxRecord{}, fmt.Errorf("%w: transfer record %d: %v", ErrCorrupt, first, err)
		}
		if !r.rec.covers(seq) {
			return TxRecord{}, fmt.Errorf("%w: transfer %d: no record", ErrCorrupt, seq)
		}
	}
	return r.rec.tx(seq), nil
}

// decodeIndexValue appends to seqs the transfers an index record
// x/<account>/<seq> lists: seq itself, then one more per uvarint in the
// value, each the (positive) increment over the previous. Records of earlier
// versions list one transfer each and have empty values.
func decodeIndexValue(seqs []uint64, seq uint64, v []byte) ([]uint64, error) {
	seqs = append(seqs, seq)
	for len(v) > 0 {
		d, n := binary.Uvarint(v)
		if n <= 0 || d == 0 || seq+d < seq {
			return seqs, errors.New("bad transfer list")
		}
		v, seq = v[n:], seq+d
		seqs = append(seqs, seq)
	}
	return seqs, nil
}
