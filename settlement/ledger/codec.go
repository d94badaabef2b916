package ledger

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Records are stored in a compact binary form: a version byte (recordV1;
// recordPosting for t/ records) followed by fields in a fixed order.
// Integers are varints, strings are a uvarint length and the bytes. Account
// and transfer records written by earlier versions as JSON (first byte '{'),
// and the one-transfer t/ records (recordV1) of earlier versions, are still
// read.
const recordV1 = 1

// Hold event kinds, as stored in e/<seq> records and hashed into the chain.
const (
	evCreate byte = 1 // a hold reserved Delta µcr
	evExtend byte = 2 // a hold reserved Delta more µcr (or only moved its expiry)
	evDraw   byte = 3 // a posting drew -Delta µcr from the hold
	evVoid   byte = 4 // VoidHold released the remaining -Delta µcr
	evExpire byte = 5 // ExpireHolds released the remaining -Delta µcr
)

// holdEvent is one change to a hold, stored under e/<seq>.
type holdEvent struct {
	Seq     uint64
	Time    int64 // unix ns
	Kind    byte
	Hold    string
	Account string
	Holder  string // set on evCreate only
	Delta   int64  // change of Remaining
	Closed  bool   // the hold is closed after this event
	Expires int64  // unix ns, the hold's expiry after this event
}

// holdRec is a hold as stored under h/<id>: its state and the sequence
// number of its latest event (readers ignore records whose latest event is
// not yet durable).
type holdRec struct {
	HoldState
	lastEvent uint64
}

var errTruncated = errors.New("truncated record")

// decoder reads the binary record format; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
	d.b = nil
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(errTruncated)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(errTruncated)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail(errTruncated)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) bytes(n int) []byte {
	if n < 0 || len(d.b) < n {
		d.fail(errTruncated)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string { return string(d.bytes(int(min(d.uvarint(), 1<<30)))) }

func (d *decoder) u64() uint64 {
	if b := d.bytes(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (d *decoder) sum() (s [32]byte) {
	copy(s[:], d.bytes(32))
	return s
}

func (d *decoder) version() {
	if v := d.byte(); v != recordV1 && d.err == nil {
		d.fail(fmt.Errorf("unknown record version %d", v))
	}
}

// finish reports a decoding error or trailing bytes.
func (d *decoder) finish() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	return d.err
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// unixNano encodes t; the zero time is 0.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// fromUnixNano decodes what unixNano encoded, in UTC.
func fromUnixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// appendAccount encodes an account state record (a/<id>).
func appendAccount(b []byte, st *AccountState) []byte {
	b = append(b, recordV1)
	b = appendStr(b, st.ID)
	b = binary.AppendVarint(b, st.Balance)
	b = binary.AppendVarint(b, st.Held)
	b = binary.AppendVarint(b, st.Earned)
	b = binary.AppendVarint(b, st.Spent)
	b = binary.AppendVarint(b, st.Calls)
	b = binary.AppendVarint(b, st.StartingCredit)
	return binary.AppendVarint(b, unixNano(st.Created))
}

func decodeAccount(v []byte) (AccountState, error) {
	var st AccountState
	if len(v) > 0 && v[0] == '{' {
		err := json.Unmarshal(v, &st)
		return st, err
	}
	d := decoder{b: v}
	d.version()
	st.ID = d.str()
	st.Balance = d.varint()
	st.Held = d.varint()
	st.Earned = d.varint()
	st.Spent = d.varint()
	st.Calls = d.varint()
	st.StartingCredit = d.varint()
	st.Created = fromUnixNano(d.varint())
	return st, d.finish()
}

// decodeTx decodes a one-transfer record (t/<seq>) of the format earlier
// versions wrote (recordV1, or JSON), returning it and its leg.
func decodeTx(v []byte) (TxRecord, string, error) {
	var r TxRecord
	if len(v) > 0 && v[0] == '{' {
		err := json.Unmarshal(v, &r)
		return r, strings.TrimPrefix(r.ID, r.Key+"/"), err
	}
	d := decoder{b: v}
	d.version()
	r.Seq = d.uvarint()
	r.Time = fromUnixNano(d.varint())
	r.Key = d.str()
	leg := d.str()
	r.ID = r.Key + "/" + leg
	r.From = d.str()
	r.To = d.str()
	r.Amount = d.varint()
	r.Kind = d.str()
	return r, leg, d.finish()
}

// recordPosting is the version byte of a posting record: the transfers of
// one posting in one t/ record, keyed by the first one's sequence number.
const recordPosting = 2

// txEntry is one transfer of a posting record; its ID is the posting's key
// + "/" + leg.
type txEntry struct {
	leg, from, to, kind string
	amount              int64
}

// postingRec is a decoded t/ record: transfers first, first+1, ... of the
// posting key, applied at time (unix ns). A record of an earlier version
// holds one transfer.
type postingRec struct {
	first uint64
	time  int64
	key   string
	txs   []txEntry
	strs  []string // decoding scratch: the record's string table
}

// covers reports whether transfer seq is in r.
func (r *postingRec) covers(seq uint64) bool {
	return len(r.txs) > 0 && seq >= r.first && seq-r.first < uint64(len(r.txs))
}

// tx returns transfer seq of r, which covers it.
func (r *postingRec) tx(seq uint64) TxRecord {
	e := &r.txs[seq-r.first]
	return TxRecord{Seq: seq, ID: r.key + "/" + e.leg, Key: r.key, From: e.from, To: e.to,
		Amount: e.amount, Kind: e.kind, Time: fromUnixNano(r.time)}
}

// appendPosting encodes a posting record (t/<first seq>; the sequence
// numbers are implied by the key): recordPosting, uvarint transfer count,
// varint time, str key, then per transfer str leg, ref from, ref to, varint
// amount, ref kind. A ref is a uvarint: 0 and a str for a string not yet in
// the record (it is appended to the record's table), or i for the table's
// i-th string (from 1). Accounts and kinds repeat within a posting, so most
// appear once. strs is scratch for the table.
func appendPosting(b []byte, now int64, key string, txs []txEntry, strs []string) ([]byte, []string) {
	b = append(b, recordPosting)
	b = binary.AppendUvarint(b, uint64(len(txs)))
	b = binary.AppendVarint(b, now)
	b = appendStr(b, key)
	strs = strs[:0]
	for i := range txs {
		e := &txs[i]
		b = appendStr(b, e.leg)
		b = appendRef(b, &strs, e.from)
		b = appendRef(b, &strs, e.to)
		b = binary.AppendVarint(b, e.amount)
		b = appendRef(b, &strs, e.kind)
	}
	return b, strs
}

// appendRef appends a reference to s in the string table strs (see
// appendPosting), adding s to the table if it is not there.
func appendRef(b []byte, strs *[]string, s string) []byte {
	for i, t := range *strs {
		if t == s {
			return binary.AppendUvarint(b, uint64(i+1))
		}
	}
	*strs = append(*strs, s)
	return appendStr(append(b, 0), s)
}

// decodePosting decodes the t/<seq> record v into r, reusing r's slices.
// Records of earlier versions (one transfer, recordV1 or JSON) are read as
// one-transfer postings; their first is the seq stored in them, which the
// caller compares with the key.
func decodePosting(seq uint64, v []byte, r *postingRec) error {
	r.txs = r.txs[:0]
	if len(v) == 0 || v[0] != recordPosting {
		tx, leg, err := decodeTx(v)
		if err != nil {
			return err
		}
		r.first, r.time, r.key = tx.Seq, unixNano(tx.Time), tx.Key
		r.txs = append(r.txs, txEntry{leg: leg, from: tx.From, to: tx.To, kind: tx.Kind, amount: tx.Amount})
		return nil
	}
	d := decoder{b: v[1:]}
	n := d.uvarint()
	r.first = seq
	r.time = d.varint()
	r.key = d.str()
	if n == 0 || n > uint64(len(d.b)) {
		return fmt.Errorf("posting record of %d transfers", n)
	}
	r.strs = r.strs[:0]
	ref := func() string {
		i := d.uvarint()
		switch {
		case d.err != nil:
			return ""
		case i == 0:
			s := d.str()
			r.strs = append(r.strs, s)
			return s
		case i <= uint64(len(r.strs)):
			return r.strs[i-1]
		}
		d.fail(fmt.Errorf("string reference %d of %d", i, len(r.strs)))
		return ""
	}
	for range n {
		var e txEntry
		e.leg = d.str()
		e.from = ref()
		e.to = ref()
		e.amount = d.varint()
		e.kind = ref()
		if d.err != nil {
			break
		}
		r.txs = append(r.txs, e)
	}
	return d.finish()
}

// appendHold encodes a hold record (h/<id>); the id is in the key.
func appendHold(b []byte, h *holdRec) []byte {
	b = append(b, recordV1)
	b = appendStr(b, h.Account)
	b = appendStr(b, h.Holder)
	b = binary.AppendVarint(b, h.Amount)
	b = binary.AppendVarint(b, h.Remaining)
	b = binary.AppendVarint(b, unixNano(h.Expires))
	b = appendBool(b, h.Closed)
	return binary.AppendUvarint(b, h.lastEvent)
}

func decodeHold(id string, v []byte) (holdRec, error) {
	h := holdRec{HoldState: HoldState{ID: id}}
	d := decoder{b: v}
	d.version()
	h.Account = d.str()
	h.Holder = d.str()
	h.Amount = d.varint()
	h.Remaining = d.varint()
	h.Expires = fromUnixNano(d.varint())
	h.Closed = d.byte() != 0
	h.lastEvent = d.uvarint()
	return h, d.finish()
}

// appendEvent encodes a hold event record (e/<seq>).
func appendEvent(b []byte, e *holdEvent) []byte {
	b = append(b, recordV1)
	b = binary.AppendUvarint(b, e.Seq)
	b = binary.AppendVarint(b, e.Time)
	b = append(b, e.Kind)
	b = appendStr(b, e.Hold)
	b = appendStr(b, e.Account)
	b = appendStr(b, e.Holder)
	b = binary.AppendVarint(b, e.Delta)
	b = appendBool(b, e.Closed)
	return binary.AppendVarint(b, e.Expires)
}

func decodeEvent(v []byte) (holdEvent, error) {
	var e holdEvent
	d := decoder{b: v}
	d.version()
	e.Seq = d.uvarint()
	e.Time = d.varint()
	e.Kind = d.byte()
	e.Hold = d.str()
	e.Account = d.str()
	e.Holder = d.str()
	e.Delta = d.varint()
	e.Closed = d.byte() != 0
	e.Expires = d.varint()
	return e, d.finish()
}

// recordLinkV2 is the version byte of a version 2 chain link record: a
// version 1 record with Root and EventSum after Digest.
const recordLinkV2 = 2

// appendLink encodes a chain link (c/<seq>) in the record format of its
// Version (1 if unset).
func appendLink(b []byte, c *ChainLink) []byte {
	v2 := c.Version >= 2
	if v2 {
		b = append(b, recordLinkV2)
	} else {
		b = append(b, recordV1)
	}
	b = binary.BigEndian.AppendUint64(b, c.Seq)
	b = append(b, c.Prev[:]...)
	b = append(b, c.Hash[:]...)
	b = append(b, c.Digest[:]...)
	if v2 {
		b = append(b, c.Root[:]...)
		b = append(b, c.EventSum[:]...)
	}
	b = binary.BigEndian.AppendUint64(b, c.FirstTx)
	b = binary.BigEndian.AppendUint64(b, c.LastTx)
	b = binary.BigEndian.AppendUint64(b, c.FirstEvent)
	b = binary.BigEndian.AppendUint64(b, c.LastEvent)
	b = binary.BigEndian.AppendUint64(b, uint64(c.Time))
	b = binary.AppendUvarint(b, uint64(len(c.Sig)))
	return append(b, c.Sig...)
}

func decodeLink(v []byte) (ChainLink, error) {
	var c ChainLink
	d := decoder{b: v}
	c.Version = d.byte()
	if c.Version != recordV1 && c.Version != recordLinkV2 && d.err == nil {
		d.fail(fmt.Errorf("unknown chain link version %d", c.Version))
	}
	c.Seq = d.u64()
	c.Prev = d.sum()
	c.Hash = d.sum()
	c.Digest = d.sum()
	if c.Version == recordLinkV2 {
		c.Root = d.sum()
		c.EventSum = d.sum()
	}
	c.FirstTx = d.u64()
	c.LastTx = d.u64()
	c.FirstEvent = d.u64()
	c.LastEvent = d.u64()
	c.Time = int64(d.u64())
	if sig := d.bytes(int(min(d.uvarint(), 1<<20))); len(sig) > 0 {
		c.Sig = append([]byte(nil), sig...)
	}
	return c, d.finish()
}
