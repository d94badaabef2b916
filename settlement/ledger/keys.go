package ledger

import (
	"encoding/binary"
	"fmt"
	"strconv"
)

// Key prefixes; see the package documentation for the layout.
const (
	prefixAccount = "a/"
	prefixAPIKey  = "k/"
	prefixKeyDesc = "d/"
	prefixNode    = "n/"
	prefixIdem    = "i/"
	prefixTx      = "t/"
	prefixIndex   = "x/"
	prefixHold    = "h/"
	prefixEvent   = "e/"
	prefixLink    = "c/"
	keyNextSeq    = "m/seq"
	keyNextEvent  = "m/eseq"
)

func accountKey(id string) []byte    { return []byte(prefixAccount + id) }
func apiKeyKey(hash string) []byte   { return []byte(prefixAPIKey + hash) }
func keyDescKey(hash string) []byte  { return []byte(prefixKeyDesc + hash) }
func nodeKey(peer string) []byte     { return []byte(prefixNode + peer) }
func idemKey(key string) []byte      { return []byte(prefixIdem + key) }
func holdKey(id string) []byte       { return []byte(prefixHold + id) }
func txKey(seq uint64) []byte        { return appendSeqKey(nil, prefixTx, seq) }
func eventKey(seq uint64) []byte     { return appendSeqKey(nil, prefixEvent, seq) }
func linkKey(seq uint64) []byte      { return appendSeqKey(nil, prefixLink, seq) }
func indexPrefix(acct string) string { return prefixIndex + acct + "/" }

func indexKey(acct string, seq uint64) []byte {
	return appendIndexKey(nil, acct, seq)
}

// appendIndexKey appends x/<acct>/<seq> to b.
func appendIndexKey(b []byte, acct string, seq uint64) []byte {
	b = append(b, prefixIndex...)
	b = append(b, acct...)
	b = append(b, '/')
	return appendSeqHex(b, seq)
}

// appendSeqKey appends prefix and the 16-digit hex seq to b.
func appendSeqKey(b []byte, prefix string, seq uint64) []byte {
	return appendSeqHex(append(b, prefix...), seq)
}

// appendSeqHex appends seq as 16 zero-padded lowercase hex digits.
func appendSeqHex(b []byte, seq uint64) []byte {
	const digits = "0123456789abcdef"
	for shift := 60; shift >= 0; shift -= 4 {
		b = append(b, digits[(seq>>uint(shift))&0xf])
	}
	return b
}

func seqString(seq uint64) string { return string(appendSeqHex(nil, seq)) }

func parseSeq(s string) (uint64, error) {
	if len(s) != 16 {
		return 0, fmt.Errorf("sequence %q: want 16 hex digits", s)
	}
	return strconv.ParseUint(s, 16, 64)
}

// prefixEnd returns the smallest key greater than every key with prefix p.
// Prefixes here end in '/', so incrementing the last byte is enough.
func prefixEnd(p string) []byte {
	b := []byte(p)
	b[len(b)-1]++
	return b
}

// idemRecord is the value stored under i/<key>.
type idemRecord struct {
	hash [32]byte
	seq  uint64
}

func (r idemRecord) encode() []byte { return r.appendTo(make([]byte, 0, 40)) }

func (r idemRecord) appendTo(b []byte) []byte {
	b = append(b, r.hash[:]...)
	return binary.BigEndian.AppendUint64(b, r.seq)
}

func decodeIdem(b []byte) (idemRecord, error) {
	if len(b) != 40 {
		return idemRecord{}, fmt.Errorf("%w: idempotency record of %d bytes", ErrCorrupt, len(b))
	}
	var r idemRecord
	copy(r.hash[:], b[:32])
	r.seq = binary.BigEndian.Uint64(b[32:])
	return r, nil
}

func encodeSeq(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

func decodeSeq(b []byte) (uint64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("%w: sequence record of %d bytes", ErrCorrupt, len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}
