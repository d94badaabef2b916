package ledger

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/wal"
)

// ChainLink seals one committed batch. Every batch that moves money or
// changes holds appends a link in the same pebble batch. Links of version 2
// (written since inclusion proofs) commit to an RFC 6962 Merkle tree over
// the batch's transfers (see merkle.go):
//
//	Root     = Merkle root of the transfers' leaves (SHA-256 of nothing if none)
//	EventSum = SHA-256(event entries)
//	Digest   = SHA-256("tokenrouter/ledger/v2" || u64 nTx || Root || u64 nEv || EventSum)
//	Hash     = SHA-256(Prev || Digest || u64 Seq || u64 Time)
//	Sig      = Signer.Sign(Hash)
//
// Links of version 1 (earlier stores; still verified) have no Root or
// EventSum and
//
//	Digest = SHA-256("tokenrouter/ledger/v1" || u64 nTx || SHA-256(tx entries) || u64 nEv || SHA-256(event entries))
//
// where a tx entry (one per transfer, not per posting record) is 't' ||
// u64 seq || str id || str from || str to || u64 amount || str kind and an event entry is 'e' || u64 seq || str hold ||
// str account || str holder || u64 delta || closed || kind || u64 expires (u64 big-endian,
// str a uvarint length and the bytes), each in sequence order. The
// domain strings differ, so a link cannot pass for the other version.
type ChainLink struct {
	Version byte     // record format: 1 or 2 (see above)
	Seq     uint64   // 1, 2, ...
	Prev    [32]byte // Hash of link Seq-1 (zero for the first)
	Hash    [32]byte
	Digest  [32]byte
	// Root and EventSum are set in version 2 links.
	Root, EventSum [32]byte
	// FirstTx..LastTx are the transfer sequence numbers the batch added
	// (0, 0 if none); FirstEvent..LastEvent its hold events likewise.
	FirstTx, LastTx       uint64
	FirstEvent, LastEvent uint64
	Time                  int64 // unix ns
	Sig                   []byte
}

// Verifier checks a chain link signature. A libp2p crypto.PubKey satisfies it.
type Verifier interface {
	Verify(data, sig []byte) (bool, error)
}

// VerifyReport counts what Verify checked; Head is the newest link's Hash,
// to be compared with a head published elsewhere (Verify cannot tell a
// store truncated to an earlier, consistent state from the original).
type VerifyReport struct {
	Links, Transfers, Holds, Accounts int
	Head                              [32]byte
}

// Head returns the newest durable chain link (Seq 0 if there is none).
func (l *Ledger) Head() ChainLink {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.pub.head
}

func appendTxDigest(b []byte, seq uint64, key, leg, from, to string, amount int64, kind string) []byte {
	b = append(b, 't')
	b = binary.BigEndian.AppendUint64(b, seq)
	b = binary.AppendUvarint(b, uint64(len(key)+1+len(leg)))
	b = append(b, key...)
	b = append(b, '/')
	b = append(b, leg...)
	b = appendStr(b, from)
	b = appendStr(b, to)
	b = binary.BigEndian.AppendUint64(b, uint64(amount))
	return appendStr(b, kind)
}

func appendEventDigest(b []byte, e *holdEvent) []byte {
	b = append(b, 'e')
	b = binary.BigEndian.AppendUint64(b, e.Seq)
	b = appendStr(b, e.Hold)
	b = appendStr(b, e.Account)
	b = appendStr(b, e.Holder)
	b = binary.BigEndian.AppendUint64(b, uint64(e.Delta))
	b = appendBool(b, e.Closed)
	b = append(b, e.Kind)
	return binary.BigEndian.AppendUint64(b, uint64(e.Expires))
}

func linkDigest(nTx uint64, txSum [32]byte, nEv uint64, evSum [32]byte) [32]byte {
	b := make([]byte, 0, 21+8+32+8+32)
	b = append(b, "tokenrouter/ledger/v1"...)
	b = binary.BigEndian.AppendUint64(b, nTx)
	b = append(b, txSum[:]...)
	b = binary.BigEndian.AppendUint64(b, nEv)
	b = append(b, evSum[:]...)
	return sha256.Sum256(b)
}

// linkDigestV2 is the Digest of a version 2 link.
func linkDigestV2(nTx uint64, root [32]byte, nEv uint64, evSum [32]byte) [32]byte {
	b := make([]byte, 0, 21+8+32+8+32)
	b = append(b, "tokenrouter/ledger/v2"...)
	b = binary.BigEndian.AppendUint64(b, nTx)
	b = append(b, root[:]...)
	b = binary.BigEndian.AppendUint64(b, nEv)
	b = append(b, evSum[:]...)
	return sha256.Sum256(b)
}

func linkHash(prev, digest [32]byte, seq uint64, time int64) [32]byte {
	b := make([]byte, 0, 80)
	b = append(b, prev[:]...)
	b = append(b, digest[:]...)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = binary.BigEndian.AppendUint64(b, uint64(time))
	return sha256.Sum256(b)
}

// Verify opens the closed ledger in dir read-only (it writes nothing) and
// re-checks it: that the newest WAL ends cleanly; every sstable's block and
// footer checksums; every chain link's Prev, Digest
// (recomputed from the stored transfer and hold-event records), Merkle root
// over the batch's transfers (version 2 links), Hash and,
// if pub is not nil, signature (a missing one fails); that transfer and
// event sequence numbers are contiguous and all covered by links; that every
// account's stored balance is the sum of its transfers, its Held the sum of
// its open holds, and every hold record matches its events; that balances
// sum to zero and only mint is negative. A mismatch is an error wrapping
// ErrTampered that says what and where; Pebble's own corruption errors are
// returned as they are.
func Verify(dir string, opts Options, pub Verifier) (VerifyReport, error) {
	opts.defaults()
	db, err := pebble.Open(dir, pebbleOptions(opts, true))
	if err != nil {
		return VerifyReport{}, fmt.Errorf("ledger: verify: open %s: %w", dir, err)
	}
	defer db.Close()
	if err := checkWALTail(opts, dir); err != nil {
		return VerifyReport{}, err
	}
	if err := checkTables(db, opts, dir); err != nil {
		return VerifyReport{}, err
	}
	return verifyDB(db, pub)
}

// checkWALTail reads the newest WAL strictly. Pebble takes a damaged last
// record for the torn tail of a crash and drops it silently, which would
// make a damaged store look like an older, consistent one. A ledger closed
// by Close ends its WAL cleanly; one that crashed must be opened once (which
// recovers it) before Verify accepts it.
func checkWALTail(opts Options, dir string) error {
	logs, err := wal.Scan(wal.Dir{FS: opts.FS, Dirname: dir})
	if err != nil || len(logs) == 0 {
		return err
	}
	newest := logs[len(logs)-1]
	r := newest.OpenForRead()
	defer r.Close()
	for {
		rec, _, err := r.NextRecord()
		if err == nil {
			_, err = io.Copy(io.Discard, rec)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("ledger: WAL %s does not end cleanly (damaged, or the ledger crashed: open it once to recover): %w", newest, err)
		}
	}
}

// checkTables validates the checksum of every block of every live sstable,
// including blocks a scan never reads (filters, properties).
func checkTables(db *pebble.DB, opts Options, dir string) error {
	levels, err := db.SSTables()
	if err != nil {
		return fmt.Errorf("ledger: verify: list tables: %w", err)
	}
	for _, level := range levels {
		for _, info := range level {
			name := opts.FS.PathJoin(dir, fmt.Sprintf("%06d.sst", uint64(info.BackingSSTNum)))
			if err := checkTable(opts, name); err != nil {
				return fmt.Errorf("ledger: verify: table %s: %w", name, err)
			}
		}
	}
	return nil
}

func checkTable(opts Options, name string) error {
	f, err := opts.FS.Open(name)
	if err != nil {
		return err
	}
	readable, err := sstable.NewSimpleReadable(f)
	if err != nil {
		return errors.Join(err, f.Close())
	}
	r, err := sstable.NewReader(context.Background(), readable, sstable.ReaderOptions{})
	if err != nil {
		return errors.Join(err, readable.Close())
	}
	return errors.Join(r.ValidateBlockChecksums(), r.Close())
}

func tampered(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrTampered, fmt.Sprintf(format, args...))
}

// seqIter walks records under a t/ or e/ prefix in key (sequence) order.
type seqIter struct {
	it     *pebble.Iterator
	prefix string
	valid  bool
	buf    []byte
}

func newSeqIter(db pebble.Reader, prefix string) (*seqIter, error) {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefix), UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, err
	}
	return &seqIter{it: it, prefix: prefix, valid: it.First()}, nil
}

// next returns the value stored under seq, which must be the next record's
// key (a t/ record is keyed by the first of its transfers).
// The value is valid until the following call.
func (s *seqIter) next(seq uint64) ([]byte, error) {
	if !s.valid {
		if err := s.it.Error(); err != nil {
			return nil, err
		}
		return nil, tampered("record %s%016x is missing", s.prefix, seq)
	}
	got, err := parseSeq(string(s.it.Key()[len(s.prefix):]))
	if err != nil {
		return nil, tampered("bad key %q", s.it.Key())
	}
	if got != seq {
		return nil, tampered("record %s%016x is missing (next is %016x)", s.prefix, seq, got)
	}
	v, err := s.it.ValueAndErr()
	if err != nil {
		return nil, err
	}
	s.buf = append(s.buf[:0], v...) // v is only valid until Next
	s.valid = s.it.Next()
	return s.buf, nil
}

// rest fails if records are left that no link covers.
func (s *seqIter) rest() error {
	if s.valid {
		return tampered("record %q is not covered by any chain link", s.it.Key())
	}
	return s.it.Error()
}

// verifyDB re-checks the chain and every balance of an open store. The
// store must not change during the call.
func verifyDB(db pebble.Reader, pub Verifier) (VerifyReport, error) {
	var rep VerifyReport
	accounts := map[string]AccountState{}
	if err := scanPrefix(db, prefixAccount, func(k string, v []byte) error {
		st, err := decodeAccount(v)
		if err != nil || st.ID != k {
			return tampered("account record %q does not decode (%v)", k, err)
		}
		accounts[k] = st
		return nil
	}); err != nil {
		return rep, err
	}
	holds := map[string]holdRec{}
	if err := scanPrefix(db, prefixHold, func(k string, v []byte) error {
		h, err := decodeHold(k, v)
		if err != nil {
			return tampered("hold record %q does not decode (%v)", k, err)
		}
		holds[k] = h
		return nil
	}); err != nil {
		return rep, err
	}

	txs, err := newSeqIter(db, prefixTx)
	if err != nil {
		return rep, err
	}
	defer txs.it.Close()
	evs, err := newSeqIter(db, prefixEvent)
	if err != nil {
		return rep, err
	}
	defer evs.it.Close()

	sums := map[string]int64{}
	replayed := map[string]*holdRec{}
	var prev ChainLink
	nextTx, nextEv := uint64(1), uint64(1)
	txSum, evSum := sha256.New(), sha256.New()
	var tree merkleAcc
	var buf []byte
	var rec postingRec
	err = scanPrefix(db, prefixLink, func(k string, v []byte) error {
		c, err := decodeLink(v)
		if err != nil {
			return tampered("chain link %q does not decode (%v)", k, err)
		}
		where := fmt.Sprintf("chain link %d", c.Seq)
		if c.Seq != prev.Seq+1 || k != seqString(c.Seq) {
			return tampered("%s stored as %q follows link %d", where, k, prev.Seq)
		}
		if c.Prev != prev.Hash {
			return tampered("%s: Prev %x is not the Hash %x of link %d", where, c.Prev[:6], prev.Hash[:6], prev.Seq)
		}
		nTx, err := rangeLen(c.FirstTx, c.LastTx, nextTx)
		if err != nil {
			return tampered("%s: transfers %d..%d: %v", where, c.FirstTx, c.LastTx, err)
		}
		nEv, err := rangeLen(c.FirstEvent, c.LastEvent, nextEv)
		if err != nil {
			return tampered("%s: hold events %d..%d: %v", where, c.FirstEvent, c.LastEvent, err)
		}
		txSum.Reset()
		tree.reset()
		sink := txSink{h: txSum}
		if c.Version >= 2 {
			sink = txSink{tree: &tree}
		}
		for seq := c.FirstTx; nTx > 0 && seq <= c.LastTx; seq += uint64(len(rec.txs)) {
			if buf, err = replayPosting(txs, seq, c.LastTx, &rec, sums, sink, buf); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
		}
		evSum.Reset()
		for seq := c.FirstEvent; nEv > 0 && seq <= c.LastEvent; seq++ {
			if buf, err = replayEvent(evs, seq, replayed, evSum, buf); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
		}
		nextTx += nTx
		nextEv += nEv
		var ts, es [32]byte
		txSum.Sum(ts[:0])
		evSum.Sum(es[:0])
		d := linkDigest(nTx, ts, nEv, es)
		if c.Version >= 2 {
			if root := tree.root(); root != c.Root {
				return tampered("%s: transfers' Merkle root is %x, link says %x", where, root[:6], c.Root[:6])
			}
			if es != c.EventSum {
				return tampered("%s: hold events digest to %x, link says %x", where, es[:6], c.EventSum[:6])
			}
			d = linkDigestV2(nTx, c.Root, nEv, c.EventSum)
		}
		if d != c.Digest {
			return tampered("%s: records digest to %x, link says %x", where, d[:6], c.Digest[:6])
		}
		if h := linkHash(c.Prev, c.Digest, c.Seq, c.Time); h != c.Hash {
			return tampered("%s: Hash %x, recomputed %x", where, c.Hash[:6], h[:6])
		}
		if pub != nil {
			if len(c.Sig) == 0 {
				return tampered("%s is not signed", where)
			}
			if ok, err := pub.Verify(c.Hash[:], c.Sig); err != nil || !ok {
				return tampered("%s: bad signature (%v)", where, err)
			}
		}
		prev = c
		rep.Links++
		return nil
	})
	if err != nil {
		return rep, err
	}
	if err := errors.Join(txs.rest(), evs.rest()); err != nil {
		return rep, err
	}
	for key, want := range map[string]uint64{keyNextSeq: nextTx, keyNextEvent: nextEv} {
		got := uint64(1)
		if err := getSeq(db, key, &got); err != nil {
			return rep, tampered("%s: %v", key, err)
		}
		if got != want {
			return rep, tampered("%s is %d, the chain ends at %d", key, got, want-1)
		}
	}
	rep.Transfers, rep.Head = int(nextTx-1), prev.Hash
	rep.Holds, rep.Accounts = len(holds), len(accounts)
	return rep, checkStored(accounts, holds, sums, replayed)
}

// rangeLen checks that first..last (0, 0 for none) starts at next and
// returns its length.
func rangeLen(first, last, next uint64) (uint64, error) {
	switch {
	case first == 0 && last == 0:
		return 0, nil
	case first != next:
		return 0, fmt.Errorf("should start at %d", next)
	case last < first:
		return 0, errors.New("empty range")
	}
	return last - first + 1, nil
}

// txSink takes a batch's transfers: their digest entries into h (version 1
// links) or their leaf hashes into tree (version 2).
type txSink struct {
	h    hash.Hash
	tree *merkleAcc
}

// replayPosting reads the posting record t/<seq>, which must end at or
// before transfer last, into rec, hashes its transfers into sink and adds
// them to sums.
func replayPosting(txs *seqIter, seq, last uint64, rec *postingRec, sums map[string]int64, sink txSink, buf []byte) ([]byte, error) {
	v, err := txs.next(seq)
	if err != nil {
		return buf, err
	}
	if err := decodePosting(seq, v, rec); err != nil || rec.first != seq || len(rec.txs) == 0 {
		rec.txs = rec.txs[:0]
		return buf, tampered("transfer record %d does not decode (%v)", seq, err)
	}
	if n := uint64(len(rec.txs)); n-1 > last-seq {
		return buf, tampered("transfer record %d holds %d transfers, past the link's last %d", seq, n, last)
	}
	for i := range rec.txs {
		e := &rec.txs[i]
		if e.amount <= 0 {
			return buf, tampered("transfer %d moves %d µcr", seq+uint64(i), e.amount)
		}
		if sink.tree != nil {
			var lh [32]byte
			lh, buf = leafHash(buf, seq+uint64(i), rec.key, e.leg, len(rec.txs), e.from, e.to, e.amount, e.kind, rec.time)
			sink.tree.add(lh)
		} else {
			buf = appendTxDigest(buf[:0], seq+uint64(i), rec.key, e.leg, e.from, e.to, e.amount, e.kind)
			sink.h.Write(buf)
		}
		sums[e.from] -= e.amount
		sums[e.to] += e.amount
	}
	return buf, nil
}

// replayEvent reads hold event seq, hashes its digest entry and applies it
// to the replayed holds.
func replayEvent(evs *seqIter, seq uint64, holds map[string]*holdRec, h hash.Hash, buf []byte) ([]byte, error) {
	v, err := evs.next(seq)
	if err != nil {
		return buf, err
	}
	e, err := decodeEvent(v)
	if err != nil || e.Seq != seq {
		return buf, tampered("hold event %d does not decode (%v)", seq, err)
	}
	buf = appendEventDigest(buf[:0], &e)
	h.Write(buf)
	hr := holds[e.Hold]
	switch {
	case e.Kind == evCreate && hr == nil && e.Delta > 0:
		hr = &holdRec{HoldState: HoldState{ID: e.Hold, Account: e.Account, Holder: e.Holder}}
		holds[e.Hold] = hr
	case hr == nil || e.Kind == evCreate:
		return buf, tampered("hold event %d: %q kind %d out of order", seq, e.Hold, e.Kind)
	case hr.Closed || hr.Account != e.Account:
		return buf, tampered("hold event %d: hold %q is closed or on another account", seq, e.Hold)
	}
	if e.Kind == evCreate || e.Kind == evExtend {
		hr.Amount += e.Delta
	}
	hr.Remaining += e.Delta
	hr.Closed = e.Closed
	hr.Expires = fromUnixNano(e.Expires)
	hr.lastEvent = seq
	if hr.Remaining < 0 || (e.Closed && hr.Remaining != 0) {
		return buf, tampered("hold event %d: hold %q left with %d µcr", seq, e.Hold, hr.Remaining)
	}
	return buf, nil
}

// checkStored compares the stored account and hold records with what the
// chain's records add up to.
func checkStored(accounts map[string]AccountState, holds map[string]holdRec, sums map[string]int64, replayed map[string]*holdRec) error {
	held := map[string]int64{}
	for id, h := range holds {
		r := replayed[id]
		if r == nil {
			return tampered("hold %q has no events", id)
		}
		if h.HoldState != r.HoldState || h.lastEvent != r.lastEvent {
			return tampered("hold %q is stored as %+v, its events give %+v", id, h.HoldState, r.HoldState)
		}
		held[h.Account] += h.Remaining
	}
	for id := range replayed {
		if _, ok := holds[id]; !ok {
			return tampered("hold %q has events but no record", id)
		}
	}
	var total int64
	for id, st := range accounts {
		if st.Balance != sums[id] {
			return tampered("account %q has balance %d, its transfers sum to %d", id, st.Balance, sums[id])
		}
		if st.Balance < 0 && id != AccountMint {
			return tampered("account %q has negative balance %d", id, st.Balance)
		}
		if st.Held != held[id] || st.Held > 0 && st.Held > st.Balance {
			return tampered("account %q holds %d of %d, its open holds %d", id, st.Held, st.Balance, held[id])
		}
		total += st.Balance
	}
	for id := range sums {
		if _, ok := accounts[id]; !ok {
			return tampered("transfers touch account %q that has no record", id)
		}
	}
	for id := range held {
		if _, ok := accounts[id]; !ok {
			return tampered("hold on account %q that has no record", id)
		}
	}
	if total != 0 {
		return tampered("balances sum to %d", total)
	}
	return nil
}
