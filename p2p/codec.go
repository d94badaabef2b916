package p2p

// Binary encoding of ReceiptBatch.
//
// JSON costs ~15 µs per receipt to decode; this encoding decodes a receipt
// in well under a microsecond. It is a plain concatenation of the fields in
// struct declaration order, with no field tags and no reflection:
//
//	batch      = version:byte(1)
//	             str(Gateway)
//	             uvarint(len(Receipts)) receipt*
//	             uvarint(len(Claims))   claimBatch*
//	             uvarint(len(Refs))     varint(ref)*
//	             bytes(Sig)
//	receipt    = str(RequestID) str(Model) str(Consumer) str(Node) str(Gateway)
//	             varint(PromptTokens) varint(CompletionTokens)
//	             varint(Price.InputPer1M) varint(Price.OutputPer1M)
//	             varint(CostUcr) varint(TimeMs)
//	             claim
//	             bytes(NodeMAC)
//	             grant
//	             str(Hold)
//	             bytes(GatewaySig)
//	claim      = str(RequestID) str(Model) str(Node) str(Gateway)
//	             varint(PromptTokens) varint(CompletionTokens)
//	             bool(Estimated) bool(Incomplete)
//	grant      = byte(0)                                  (Grant == nil)
//	           | byte(1) str(Account) str(Gateway) varint(ExpiresMs) bytes(Sig)
//	claimBatch = str(Node) str(Gateway) bytes(Hashes) bytes(Sig)
//
//	str, bytes = uvarint(length) raw bytes (strings need not be UTF-8)
//	uvarint    = encoding/binary unsigned varint; varint = its zig-zag signed form
//	bool       = byte 0 or 1
//
// The decoder is strict, so that every value has exactly one encoding (a
// changed byte can never decode to the same batch): the version must be 1,
// varints must be minimal (no trailing 0x00 continuation byte), bool and
// presence bytes must be 0 or 1, and no bytes may follow the batch.
//
// Nil and empty are not distinguished: an empty string, []byte, Receipts,
// Claims or Refs all encode as length 0 and decode as "" or nil. Nil
// elements of Receipts or Claims cannot be encoded (AppendBinary errs).
//
// Allocation is bounded by the input: every length or count is checked
// against the bytes left (a count against the smallest encoding of one
// element) before anything is allocated, so a lying prefix fails instead of
// allocating. A decode makes one copy of the input, plus one slab for all
// receipts, one for their grants and the slices of pointers.
//
// Strings and byte slices of the decoded batch point into that one copy
// (strings via unsafe.String; the string and []byte regions never overlap,
// and each []byte is capped so an append reallocates instead of writing
// into its neighbour). Keeping any one of them alive keeps the whole copy
// alive: clone (strings.Clone, bytes.Clone) what is kept long after the
// batch is processed. Measured on a 1,000-receipt batch (~730 bytes a
// receipt), this single copy decodes ~10-20% faster and allocates 40% less
// (1.1 MB instead of 1.85 MB) than string(data) plus a separate copy for
// the []byte fields; copying each field apart would take ~15 allocations
// a receipt.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"
)

// ErrBadEncoding is returned (wrapped) for malformed binary input.
var ErrBadEncoding = errors.New("p2p: bad binary encoding")

// receiptBatchVersion is the leading byte of a binary ReceiptBatch.
const receiptBatchVersion = 1

// Smallest encodings, to bound counts by the input before allocating.
const (
	minClaimSize      = 4 + 2 + 2                // 4 empty strings, 2 one-byte varints, 2 bools
	minReceiptSize    = 5 + 6 + minClaimSize + 4 // + NodeMAC, grant presence, Hold, GatewaySig
	minClaimBatchSize = 4                        // 2 empty strings, 2 empty byte slices
	minRefSize        = 1
)

// MarshalBinary is AppendBinary(nil).
func (b *ReceiptBatch) MarshalBinary() ([]byte, error) {
	return b.AppendBinary(make([]byte, 0, b.sizeHint()))
}

// sizeHint is an upper bound of the encoding's size (exact up to varints),
// to allocate once.
func (b *ReceiptBatch) sizeHint() int {
	n := 1 + 10 + len(b.Gateway) + 3*10 + 10*len(b.Refs) + 10 + len(b.Sig)
	for _, r := range b.Receipts {
		if r == nil {
			continue
		}
		n += 15*10 + 4 + len(r.RequestID) + len(r.Model) + len(r.Consumer) + len(r.Node) + len(r.Gateway) +
			len(r.Claim.RequestID) + len(r.Claim.Model) + len(r.Claim.Node) + len(r.Claim.Gateway) +
			len(r.NodeMAC) + len(r.Hold) + len(r.GatewaySig)
		if g := r.Grant; g != nil {
			n += 4*10 + len(g.Account) + len(g.Gateway) + len(g.Sig)
		}
	}
	for _, c := range b.Claims {
		if c != nil {
			n += 4*10 + len(c.Node) + len(c.Gateway) + len(c.Hashes) + len(c.Sig)
		}
	}
	return n
}

// AppendBinary appends the batch's binary encoding to dst. It fails only
// on a nil receipt or claim batch, returning dst unchanged.
func (b *ReceiptBatch) AppendBinary(dst []byte) ([]byte, error) {
	orig := dst
	dst = append(dst, receiptBatchVersion)
	dst = appendStr(dst, b.Gateway)
	dst = binary.AppendUvarint(dst, uint64(len(b.Receipts)))
	for i, r := range b.Receipts {
		if r == nil {
			return orig, fmt.Errorf("p2p: cannot encode receipt batch: receipt %d is nil", i)
		}
		dst = r.appendBinary(dst)
	}
	dst = binary.AppendUvarint(dst, uint64(len(b.Claims)))
	for i, c := range b.Claims {
		if c == nil {
			return orig, fmt.Errorf("p2p: cannot encode receipt batch: claim batch %d is nil", i)
		}
		dst = appendStr(dst, c.Node)
		dst = appendStr(dst, c.Gateway)
		dst = appendBytes(dst, c.Hashes)
		dst = appendBytes(dst, c.Sig)
	}
	dst = binary.AppendUvarint(dst, uint64(len(b.Refs)))
	for _, ref := range b.Refs {
		dst = binary.AppendVarint(dst, int64(ref))
	}
	return appendBytes(dst, b.Sig), nil
}

func (r *Receipt) appendBinary(b []byte) []byte {
	b = r.appendCore(b) // the receipt's fields and claim, as in its signing bytes
	b = appendBytes(b, r.NodeMAC)
	if g := r.Grant; g != nil {
		b = append(b, 1)
		b = appendStr(b, g.Account)
		b = appendStr(b, g.Gateway)
		b = binary.AppendVarint(b, g.ExpiresMs)
		b = appendBytes(b, g.Sig)
	} else {
		b = append(b, 0)
	}
	b = appendStr(b, r.Hold)
	return appendBytes(b, r.GatewaySig)
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// UnmarshalBinary decodes data into b, replacing its contents; on error b
// is left unchanged. It never panics, never allocates more than a constant
// factor of len(data), rejects trailing bytes, and reports malformed input
// with an error wrapping ErrBadEncoding. b does not retain data (it decodes
// from its own copy).
func (b *ReceiptBatch) UnmarshalBinary(data []byte) error {
	if len(data) == 0 {
		return fmt.Errorf("%w: empty input", ErrBadEncoding)
	}
	if data[0] != receiptBatchVersion {
		return fmt.Errorf("%w: unknown version %d", ErrBadEncoding, data[0])
	}
	buf := bytes.Clone(data)
	d := decoder{b: buf, s: unsafe.String(unsafe.SliceData(buf), len(buf)), off: 1}
	var out ReceiptBatch
	out.Gateway = d.str()
	if n := d.count(minReceiptSize); n > 0 {
		slab := make([]Receipt, n)
		out.Receipts = make([]*Receipt, n)
		var grants []Grant
		for i := range slab {
			r := &slab[i]
			out.Receipts[i] = r
			d.receipt(r, &grants, n-i)
			if d.err != nil {
				return d.err
			}
		}
	}
	if n := d.count(minClaimBatchSize); n > 0 {
		slab := make([]ClaimBatch, n)
		out.Claims = make([]*ClaimBatch, n)
		for i := range slab {
			c := &slab[i]
			out.Claims[i] = c
			c.Node = d.str()
			c.Gateway = d.str()
			c.Hashes = d.bytes()
			c.Sig = d.bytes()
		}
	}
	if n := d.count(minRefSize); n > 0 {
		out.Refs = make([]int, n)
		for i := range out.Refs {
			v := d.varint()
			if int64(int(v)) != v {
				d.fail("reference out of range")
			}
			out.Refs[i] = int(v)
		}
	}
	out.Sig = d.bytes()
	if d.err == nil && d.off != len(d.b) {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return d.err
	}
	*b = out
	return nil
}

// decoder reads the encoding from b. s is b as a string: strings are
// substrings of it, []byte values subslices of b. After the first error,
// err is set, off is at the end, and every read returns a zero value.
type decoder struct {
	b   []byte
	s   string
	off int
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s at offset %d", ErrBadEncoding, what, d.off)
	}
	d.off = len(d.b)
}

func (d *decoder) uvarint() uint64 {
	if d.off < len(d.b) && d.b[d.off] < 0x80 {
		v := d.b[d.off]
		d.off++
		return uint64(v)
	}
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	if d.b[d.off+n-1] == 0 {
		d.fail("non-minimal varint")
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) varint() int64 {
	u := d.uvarint()
	v := int64(u >> 1)
	if u&1 != 0 {
		v = ^v
	}
	return v
}

// length reads a length and checks that many bytes remain.
func (d *decoder) length() int {
	n := d.uvarint()
	if n > uint64(len(d.b)-d.off) {
		d.fail("length beyond input")
		return 0
	}
	return int(n)
}

// count reads an element count and checks it could fit in what remains,
// with each element taking at least min bytes.
func (d *decoder) count(min int) int {
	n := d.uvarint()
	if n > uint64((len(d.b)-d.off)/min) {
		d.fail("count beyond input")
		return 0
	}
	return int(n)
}

func (d *decoder) str() string {
	n := d.length()
	if n == 0 {
		return ""
	}
	s := d.s[d.off : d.off+n]
	d.off += n
	return s
}

// bytes returns the next byte string, nil if empty, capped at its length.
func (d *decoder) bytes() []byte {
	n := d.length()
	if n == 0 {
		return nil
	}
	v := d.b[d.off : d.off+n : d.off+n]
	d.off += n
	return v
}

func (d *decoder) bool() bool {
	if d.off >= len(d.b) || d.b[d.off] > 1 {
		d.fail("bad bool")
		return false
	}
	v := d.b[d.off] == 1
	d.off++
	return v
}

// receipt decodes one receipt into r; a grant is placed in *grants, a slab
// allocated on first use with room for the left receipts' grants.
func (d *decoder) receipt(r *Receipt, grants *[]Grant, left int) {
	r.RequestID = d.str()
	r.Model = d.str()
	r.Consumer = d.str()
	r.Node = d.str()
	r.Gateway = d.str()
	r.PromptTokens = d.varint()
	r.CompletionTokens = d.varint()
	r.Price.InputPer1M = d.varint()
	r.Price.OutputPer1M = d.varint()
	r.CostUcr = d.varint()
	r.TimeMs = d.varint()
	c := &r.Claim
	c.RequestID = d.str()
	c.Model = d.str()
	c.Node = d.str()
	c.Gateway = d.str()
	c.PromptTokens = d.varint()
	c.CompletionTokens = d.varint()
	c.Estimated = d.bool()
	c.Incomplete = d.bool()
	r.NodeMAC = d.bytes()
	if d.bool() {
		if *grants == nil {
			// At most one grant per receipt left; bounded by the input
			// as the receipt count was.
			*grants = make([]Grant, 0, left)
		}
		*grants = append(*grants, Grant{})
		g := &(*grants)[len(*grants)-1]
		g.Account = d.str()
		g.Gateway = d.str()
		g.ExpiresMs = d.varint()
		g.Sig = d.bytes()
		r.Grant = g
	}
	r.Hold = d.str()
	r.GatewaySig = d.bytes()
}
