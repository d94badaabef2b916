package ledger

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// overlay holds the entries a txn changes, over the working state. Steps
// (one posting each) can be rolled back: the first change of an older entry
// in a step saves its value, and entries added in the step are dropped.
type overlay[V any] struct {
	idx  map[string]int
	ids  []string
	vals []V
	gen  []uint32 // step that last saved or added the entry
	cur  uint32   // current step
	mark int      // entries >= mark were added in the current step
	undo []saved[V]
}

type saved[V any] struct {
	i int
	v V
}

func (o *overlay[V]) reset() {
	if o.idx == nil {
		o.idx = map[string]int{}
	}
	clear(o.idx)
	o.ids, o.vals, o.gen, o.undo = o.ids[:0], o.vals[:0], o.gen[:0], o.undo[:0]
	o.mark = 0
	o.cur++
}

func (o *overlay[V]) find(id string) (int, bool) {
	i, ok := o.idx[id]
	return i, ok
}

func (o *overlay[V]) add(id string, v V) int {
	i := len(o.vals)
	o.idx[id] = i
	o.ids = append(o.ids, id)
	o.vals = append(o.vals, v)
	o.gen = append(o.gen, o.cur)
	return i
}

// at returns entry i for changing. The pointer is valid until the next add.
func (o *overlay[V]) at(i int) *V {
	if i < o.mark && o.gen[i] != o.cur {
		o.undo = append(o.undo, saved[V]{i, o.vals[i]})
		o.gen[i] = o.cur
	}
	return &o.vals[i]
}

// begin starts a step.
func (o *overlay[V]) begin() {
	o.cur++
	o.mark = len(o.vals)
	o.undo = o.undo[:0]
}

// rollback undoes the current step.
func (o *overlay[V]) rollback() {
	for j := len(o.undo) - 1; j >= 0; j-- {
		o.vals[o.undo[j].i] = o.undo[j].v
	}
	for _, id := range o.ids[o.mark:] {
		delete(o.idx, id)
	}
	o.ids, o.vals, o.gen = o.ids[:o.mark], o.vals[:o.mark], o.gen[:o.mark]
	o.begin()
}

// txn is one write in preparation: the account and hold states it changes,
// the records it adds (already in its pebble batch), and the running digest
// of its transfers and hold events. It sees the working state; nothing in
// the Ledger changes until it is handed to Pebble.
type txn struct {
	l     *Ledger
	now   time.Time
	nowNs int64
	b     *pebble.Batch

	accts overlay[AccountState]
	holds overlay[holdRec]
	keys  map[string]keyRec   // API key hashes added -> account and the key's description
	idem  map[string][32]byte // idempotency keys applied by this txn

	firstSeq, nextSeq     uint64
	firstEvent, nextEvent uint64
	txSum, evSum          hash.Hash
	tree                  merkleAcc  // the transfers' leaf hashes (version 2 links)
	dirty                 bool       // something to write
	link                  *ChainLink // set by finish when the txn moves money or holds

	// Records to write, buffered so they reach the batch in key order:
	// sorted inserts are several times cheaper in Pebble's memtable
	// skiplist than random ones. Posting records (txs) are made in key
	// order and index entries (xs) in sequence order per account, so only
	// the other records (kvs) need a comparison sort; writeBatch merges.
	arena []byte
	kvs   []kvRef
	txs   []kvRef
	xs    []indexEnt

	// Scratch for writeBatch.
	xrank  []int32 // overlay account index -> rank of its index prefix, or -1
	xorder []int32 // accounts with index entries, in key order
	aorder []int32 // overlay account indexes in id order
	xsort  []indexEnt

	// Scratch for the posting being applied.
	pend   []pendingTx
	pendEv []holdEvent
	ents   []txEntry
	strs   []string
	kbuf   []byte
	vbuf   []byte
	dbuf   []byte
}

// kvRef locates one record in txn.arena: key at off, then the value.
type kvRef struct{ off, klen, vlen uint32 }

// indexEnt notes that transfer seq touches the account at overlay index acct.
type indexEnt struct {
	acct int32
	seq  uint64
}

// set buffers a record for the batch; k and v are copied.
func (t *txn) set(k, v []byte) error {
	off := len(t.arena)
	t.arena = append(append(t.arena, k...), v...)
	t.kvs = append(t.kvs, kvRef{off: uint32(off), klen: uint32(len(k)), vlen: uint32(len(v))})
	return nil
}

func (t *txn) kvKey(r kvRef) []byte { return t.arena[r.off : r.off+r.klen] }

// writeBatch puts the buffered records into a new pebble batch in key
// order. The order only makes the memtable insert cheaper; any order would
// be correct.
func (t *txn) writeBatch() error {
	slices.SortFunc(t.kvs, func(a, b kvRef) int { return bytes.Compare(t.kvKey(a), t.kvKey(b)) })
	// Accounts in id order: the order of their a/ records, and (up to ids
	// that are prefixes of others) of their x/ records.
	ids := t.accts.ids
	t.aorder = t.aorder[:0]
	for i := range ids {
		t.aorder = append(t.aorder, int32(i))
	}
	slices.SortFunc(t.aorder, func(a, b int32) int { return strings.Compare(ids[a], ids[b]) })
	xs := t.sortIndex()
	size := len(t.arena) + 8*(len(t.kvs)+len(t.txs)) + 64
	for _, a := range t.aorder {
		size += len(prefixAccount) + len(ids[a]) + 48 + 8
	}
	for _, a := range t.xorder {
		size += len(prefixIndex) + len(ids[a]) + 1 + 16 + 8
	}
	size += 3 * len(xs)
	t.b = t.l.db.NewBatchWithSize(size)
	// Keys in order: account states ("a/" is the lowest prefix), then
	// t.kvs (which holds no a/, t/ or x/ keys) below "t/", the postings,
	// t.kvs between, the index, and the rest.
	for _, a := range t.aorder {
		t.kbuf = append(append(t.kbuf[:0], prefixAccount...), ids[a]...)
		t.vbuf = appendAccount(t.vbuf[:0], &t.accts.vals[a])
		if err := t.b.Set(t.kbuf, t.vbuf, nil); err != nil {
			return err
		}
	}
	tx, x := t.lowerBound(prefixTx), t.lowerBound(prefixIndex)
	if err := t.putKVs(t.kvs[:tx]); err != nil {
		return err
	}
	if err := t.putKVs(t.txs); err != nil {
		return err
	}
	if err := t.putKVs(t.kvs[tx:x]); err != nil {
		return err
	}
	for i := 0; i < len(xs); {
		// One record per account: its first transfer in the key, the
		// others as increments in the value.
		acct, seq := xs[i].acct, xs[i].seq
		t.vbuf = t.vbuf[:0]
		for i++; i < len(xs) && xs[i].acct == acct; i++ {
			t.vbuf = binary.AppendUvarint(t.vbuf, xs[i].seq-xs[i-1].seq)
		}
		t.kbuf = appendIndexKey(t.kbuf[:0], t.accts.ids[acct], seq)
		if err := t.b.Set(t.kbuf, t.vbuf, nil); err != nil {
			return err
		}
	}
	return t.putKVs(t.kvs[x:])
}

// lowerBound returns the index in the sorted t.kvs of the first key >= k.
func (t *txn) lowerBound(k string) int {
	i, _ := slices.BinarySearchFunc(t.kvs, k, func(r kvRef, k string) int {
		return bytes.Compare(t.kvKey(r), []byte(k))
	})
	return i
}

func (t *txn) putKVs(rs []kvRef) error {
	for _, r := range rs {
		if err := t.b.Set(t.kvKey(r), t.arena[r.off+r.klen:r.off+r.klen+r.vlen], nil); err != nil {
			return err
		}
	}
	return nil
}

// sortIndex returns the index entries in key order: by account prefix
// "<account>/", then sequence number. It needs t.aorder. Entries are made in sequence order,
// so a stable counting sort by account suffices.
func (t *txn) sortIndex() []indexEnt {
	t.xorder = t.xorder[:0]
	if len(t.xs) == 0 {
		return nil
	}
	n := len(t.accts.ids)
	t.xrank = slices.Grow(t.xrank[:0], n)[:n]
	for i := range t.xrank {
		t.xrank[i] = -1
	}
	for _, e := range t.xs {
		t.xrank[e.acct] = 0
	}
	// t.aorder is in id order, which is index key order unless an id is a
	// prefix of another.
	for _, a := range t.aorder {
		if t.xrank[a] == 0 {
			t.xorder = append(t.xorder, a)
		}
	}
	ids := t.accts.ids
	cmp := func(a, b int32) int { return cmpIndexPrefix(ids[a], ids[b]) }
	if !slices.IsSortedFunc(t.xorder, cmp) {
		slices.SortFunc(t.xorder, cmp)
	}
	// Offsets: xrank[acct] becomes the next free slot of the account.
	counts := make([]int32, len(t.xorder)+1)
	for r, a := range t.xorder {
		t.xrank[a] = int32(r)
	}
	for _, e := range t.xs {
		counts[t.xrank[e.acct]+1]++
	}
	for r := 1; r < len(counts); r++ {
		counts[r] += counts[r-1]
	}
	t.xsort = slices.Grow(t.xsort[:0], len(t.xs))[:len(t.xs)]
	for _, e := range t.xs {
		r := t.xrank[e.acct]
		t.xsort[counts[r]] = e
		counts[r]++
	}
	return t.xsort
}

// cmpIndexPrefix compares a+"/" with b+"/", the order of the accounts'
// index keys.
func cmpIndexPrefix(a, b string) int {
	n := min(len(a), len(b))
	if c := strings.Compare(a[:n], b[:n]); c != 0 {
		return c
	}
	// One is a prefix of the other: compare '/' with the longer one's next byte.
	switch {
	case len(a) == len(b):
		return 0
	case len(a) < len(b):
		return cmpByte('/', b[n])
	default:
		return cmpByte(a[n], '/')
	}
}

func cmpByte(a, b byte) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

type pendingTx struct {
	index    int // position in Posting.Transfers
	t        *Transfer
	from, to int // overlay indexes of the accounts
}

func (l *Ledger) newTxn() *txn {
	t, _ := l.txns.Get().(*txn)
	if t == nil {
		t = &txn{l: l, keys: map[string]keyRec{}, idem: map[string][32]byte{},
			txSum: sha256.New(), evSum: sha256.New()}
	}
	t.now = l.now().UTC()
	t.nowNs = t.now.UnixNano()
	t.accts.reset()
	t.holds.reset()
	clear(t.keys)
	clear(t.idem)
	t.firstSeq, t.nextSeq = l.w.nextSeq, l.w.nextSeq
	t.firstEvent, t.nextEvent = l.w.nextEvent, l.w.nextEvent
	t.txSum.Reset()
	t.evSum.Reset()
	t.tree.reset()
	t.dirty, t.link = false, nil
	t.arena, t.kvs, t.txs, t.xs = t.arena[:0], t.kvs[:0], t.txs[:0], t.xs[:0]
	return t
}

func (l *Ledger) putTxn(t *txn) {
	t.b, t.link = nil, nil
	if cap(t.arena) > 64<<20 {
		t.arena, t.kvs, t.txs, t.xs, t.xsort = nil, nil, nil, nil, nil
	}
	l.txns.Put(t)
}

// begin starts a step (one posting) that rollback can undo.
func (t *txn) begin() {
	t.accts.begin()
	t.holds.begin()
	t.pend, t.pendEv = t.pend[:0], t.pendEv[:0]
}

func (t *txn) rollback() {
	t.accts.rollback()
	t.holds.rollback()
	t.pend, t.pendEv = t.pend[:0], t.pendEv[:0]
}

// acct returns the overlay index of account id, loading it from the working
// state or creating a "node:" account on demand.
func (t *txn) acct(id string) (int, error) {
	if i, ok := t.accts.find(id); ok {
		return i, nil
	}
	if st, ok := t.l.w.accounts[id]; ok {
		return t.accts.add(id, st), nil
	}
	if strings.HasPrefix(id, NodeAccountPrefix) && len(id) > len(NodeAccountPrefix) && validAccountID(id) {
		return t.accts.add(id, AccountState{ID: id, Created: t.now}), nil
	}
	return -1, fmt.Errorf("%w: %q", ErrUnknownAccount, id)
}

// hold returns the overlay index of hold id, loading it from the working
// state or, if closed, from the store; ErrUnknownHold if there is none.
// Every batch handed to Pebble is readable, so the store matches the
// working state.
func (t *txn) hold(id string) (int, error) {
	if i, ok := t.holds.find(id); ok {
		return i, nil
	}
	if h, ok := t.l.w.holds[id]; ok {
		return t.holds.add(id, h), nil
	}
	h, found, err := readHold(t.l.db, id)
	if err != nil {
		return -1, err
	}
	if !found {
		return -1, fmt.Errorf("%w: %q", ErrUnknownHold, id)
	}
	return t.holds.add(id, h), nil
}

func readHold(db pebble.Reader, id string) (holdRec, bool, error) {
	v, closer, err := db.Get(holdKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		return holdRec{}, false, nil
	}
	if err != nil {
		return holdRec{}, false, fmt.Errorf("ledger: read hold %q: %w", id, err)
	}
	defer closer.Close()
	h, err := decodeHold(id, v)
	if err != nil {
		return holdRec{}, false, fmt.Errorf("%w: hold %q: %v", ErrCorrupt, id, err)
	}
	return h, true, nil
}

// addEvent records a hold event for hold i: writes it, hashes it into the
// digest and stamps the hold with its sequence number.
func (t *txn) addEvent(i int, e holdEvent) error {
	e.Seq, e.Time = t.nextEvent, t.nowNs
	t.nextEvent++
	t.holds.at(i).lastEvent = e.Seq
	t.dbuf = appendEventDigest(t.dbuf[:0], &e)
	t.evSum.Write(t.dbuf)
	t.vbuf = appendEvent(t.vbuf[:0], &e)
	t.kbuf = appendSeqKey(t.kbuf[:0], prefixEvent, e.Seq)
	t.dirty = true
	return t.set(t.kbuf, t.vbuf)
}

// addPosting records the transfers in t.pend of the posting p: their
// digest entries, numbered from t.nextSeq, and ONE posting record
// t/<first seq> holding them all. addIndex writes their index entries.
func (t *txn) addPosting(p *Posting) {
	first := t.nextSeq
	t.ents = t.ents[:0]
	for _, pt := range t.pend {
		tr := pt.t
		e := txEntry{leg: legOf(p.Transfers, pt.index), from: tr.From, to: tr.To, kind: tr.Kind, amount: tr.Amount}
		if t.l.linkVersion == 1 {
			t.dbuf = appendTxDigest(t.dbuf[:0], t.nextSeq, p.Key, e.leg, e.from, e.to, e.amount, e.kind)
			t.txSum.Write(t.dbuf)
		} else {
			var h [32]byte
			h, t.dbuf = leafHash(t.dbuf, t.nextSeq, p.Key, e.leg, len(t.pend), e.from, e.to, e.amount, e.kind, t.nowNs)
			t.tree.add(h)
		}
		t.nextSeq++
		t.ents = append(t.ents, e)
	}
	off := len(t.arena)
	t.arena = appendSeqKey(t.arena, prefixTx, first)
	klen := len(t.arena) - off
	t.arena, t.strs = appendPosting(t.arena, t.nowNs, p.Key, t.ents, t.strs)
	t.txs = append(t.txs, kvRef{off: uint32(off), klen: uint32(klen), vlen: uint32(len(t.arena) - off - klen)})
	t.dirty = true
}

// addIndex notes the index entries of the transfers in t.pend, numbered
// from first. writeBatch makes them one x/<account>/<seq> record per
// account the txn touches.
func (t *txn) addIndex(first uint64) {
	for j, pt := range t.pend {
		seq := first + uint64(j)
		t.xs = append(t.xs, indexEnt{acct: int32(pt.from), seq: seq}, indexEnt{acct: int32(pt.to), seq: seq})
	}
}

// finish writes the changed hold states, counters and, if the txn moved
// money or changed holds, the next chain link (signed) into the batch.
// writeBatch writes the account states.
func (t *txn) finish() error {
	for i := range t.holds.vals {
		t.kbuf = append(append(t.kbuf[:0], prefixHold...), t.holds.ids[i]...)
		t.vbuf = appendHold(t.vbuf[:0], &t.holds.vals[i])
		if err := t.set(t.kbuf, t.vbuf); err != nil {
			return err
		}
	}
	for hash, rec := range t.keys {
		if err := t.set(apiKeyKey(hash), []byte(rec.account)); err != nil {
			return err
		}
		if err := t.set(keyDescKey(hash), rec.encodeInfo()); err != nil {
			return err
		}
	}
	if t.nextSeq != t.firstSeq {
		if err := t.set([]byte(keyNextSeq), encodeSeq(t.nextSeq)); err != nil {
			return err
		}
	}
	if t.nextEvent != t.firstEvent {
		if err := t.set([]byte(keyNextEvent), encodeSeq(t.nextEvent)); err != nil {
			return err
		}
	}
	if t.nextSeq == t.firstSeq && t.nextEvent == t.firstEvent {
		return nil
	}
	head := t.l.w.head
	c := &ChainLink{Version: t.l.linkVersion, Seq: head.Seq + 1, Prev: head.Hash, Time: t.nowNs}
	if t.nextSeq != t.firstSeq {
		c.FirstTx, c.LastTx = t.firstSeq, t.nextSeq-1
	}
	if t.nextEvent != t.firstEvent {
		c.FirstEvent, c.LastEvent = t.firstEvent, t.nextEvent-1
	}
	var txSum, evSum [32]byte
	t.txSum.Sum(txSum[:0])
	t.evSum.Sum(evSum[:0])
	if c.Version == 1 {
		c.Digest = linkDigest(t.nextSeq-t.firstSeq, txSum, t.nextEvent-t.firstEvent, evSum)
	} else {
		c.Root, c.EventSum = t.tree.root(), evSum
		c.Digest = linkDigestV2(t.nextSeq-t.firstSeq, c.Root, t.nextEvent-t.firstEvent, evSum)
	}
	c.Hash = linkHash(c.Prev, c.Digest, c.Seq, c.Time)
	if t.l.signer != nil {
		sig, err := t.l.signer.Sign(c.Hash[:])
		if err != nil {
			return fmt.Errorf("ledger: sign chain link %d: %w", c.Seq, err)
		}
		c.Sig = sig
	}
	t.link = c
	t.vbuf = appendLink(t.vbuf[:0], c)
	return t.set(linkKey(c.Seq), t.vbuf)
}

// applyTo installs t's changes into s (the working or the published state).
func (t *txn) applyTo(s *state) {
	for i, id := range t.accts.ids {
		s.accounts[id] = t.accts.vals[i]
	}
	for i, id := range t.holds.ids {
		if h := t.holds.vals[i]; h.Closed {
			delete(s.holds, id)
		} else {
			s.holds[id] = h
		}
	}
	s.nextSeq, s.nextEvent = t.nextSeq, t.nextEvent
	if t.link != nil {
		s.head = *t.link
	}
}

// run is every balance-changing write. Under wmu it builds a txn against the
// working state and hands its batch to Pebble's commit pipeline, which
// orders it after every earlier batch and makes it readable; it then waits
// for the WAL fsync outside the lock (so concurrent writers share fsyncs),
// waits for the previous batch to be published, and publishes its own
// changes to readers. It returns only once everything the txn depends on
// is durable, even when the txn itself writes nothing (a replay).
//
// An error from build discards the txn. An fsync failure leaves the working
// state ahead of the disk, so the ledger refuses every later write.
func (l *Ledger) run(build func(t *txn) error) error {
	l.wmu.Lock()
	if err := l.writable(); err != nil {
		l.wmu.Unlock()
		return err
	}
	t := l.newTxn()
	defer l.putTxn(t)
	err := build(t)
	if err == nil && t.dirty {
		err = t.finish()
	}
	if err == nil && t.dirty {
		err = t.writeBatch()
	}
	if err != nil || !t.dirty {
		if t.b != nil {
			_ = t.b.Close()
		}
		prev := l.tail
		l.wmu.Unlock()
		if err != nil {
			return err
		}
		<-prev.done
		return prev.err
	}
	if err := l.db.ApplyNoSyncWait(t.b, pebble.Sync); err != nil {
		_ = t.b.Close()
		l.wmu.Unlock()
		return fmt.Errorf("ledger: commit: %w", err)
	}
	t.applyTo(&l.w)
	prev, mine := l.tail, &ticket{done: make(chan struct{})}
	l.tail = mine
	l.wmu.Unlock()

	err = t.b.SyncWait()
	<-prev.done
	if err != nil {
		err = fmt.Errorf("ledger: commit: %w", err)
		l.failed.CompareAndSwap(nil, &err)
	} else if prev.err != nil {
		err = prev.err
	} else {
		l.mu.Lock()
		t.applyTo(&l.pub)
		for hash, rec := range t.keys {
			l.addKey(hash, rec)
		}
		l.mu.Unlock()
	}
	mine.err = err
	close(mine.done)
	_ = t.b.Close()
	return err
}
