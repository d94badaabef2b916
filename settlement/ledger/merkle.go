package ledger

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// A version-2 chain link commits to an RFC 6962 Merkle tree over its
// batch's transfers, one leaf per transfer in sequence order:
//
//	leaf      = leafV2 || u64 seq || str id || uvarint legs || str from || str to || u64 amount || str kind || u64 time
//	leaf hash = SHA-256(0x00 || leaf)
//	node hash = SHA-256(0x01 || left || right)
//
// (u64 big-endian, str a uvarint length and the bytes, legs the number of
// transfers of the posting, time the posting's unix ns). A posting's
// transfers have consecutive seqs, and every leaf names how many there are,
// so a proof cannot leave one of a call's legs out unnoticed. The root of an empty batch is SHA-256 of nothing. Inclusion
// proofs are built and checked with github.com/transparency-dev/merkle;
// the commit path computes the root with merkleAcc, which gives the same
// root without an allocation per node.
const leafV2 = 2

// appendLeaf appends the leaf encoding of transfer seq.
func appendLeaf(b []byte, seq uint64, key, leg string, legs int, from, to string, amount int64, kind string, time int64) []byte {
	b = append(b, leafV2)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = binary.AppendUvarint(b, uint64(len(key)+1+len(leg)))
	b = append(b, key...)
	b = append(b, '/')
	b = append(b, leg...)
	b = binary.AppendUvarint(b, uint64(legs))
	b = appendStr(b, from)
	b = appendStr(b, to)
	b = binary.BigEndian.AppendUint64(b, uint64(amount))
	b = appendStr(b, kind)
	return binary.BigEndian.AppendUint64(b, uint64(time))
}

// leafHash is SHA-256(0x00 || leaf) of the leaf appendLeaf would encode;
// buf is scratch and is returned for reuse.
func leafHash(buf []byte, seq uint64, key, leg string, legs int, from, to string, amount int64, kind string, time int64) ([32]byte, []byte) {
	buf = appendLeaf(append(buf[:0], 0), seq, key, leg, legs, from, to, amount, kind, time)
	return sha256.Sum256(buf), buf
}

// decodeLeaf parses a leaf encoding back into the transfer it describes
// and the number of transfers of its posting.
func decodeLeaf(b []byte) (r TxRecord, legs uint64, err error) {
	if len(b) == 0 || b[0] != leafV2 {
		return r, 0, errors.New("unknown leaf format")
	}
	d := decoder{b: b[1:]}
	r.Seq = d.u64()
	r.ID = d.str()
	legs = d.uvarint()
	r.From = d.str()
	r.To = d.str()
	r.Amount = int64(d.u64())
	r.Kind = d.str()
	r.Time = fromUnixNano(int64(d.u64()))
	if err := d.finish(); err != nil {
		return r, 0, err
	}
	i := strings.LastIndexByte(r.ID, '/')
	if i <= 0 {
		return r, 0, fmt.Errorf("transfer id %q has no leg", r.ID)
	}
	r.Key = r.ID[:i]
	return r, legs, nil
}

func hashChildren(l, r *[32]byte) [32]byte {
	var b [65]byte
	b[0] = 1
	copy(b[1:33], l[:])
	copy(b[33:], r[:])
	return sha256.Sum256(b[:])
}

// merkleAcc computes an RFC 6962 tree root from leaf hashes appended one at
// a time, in O(log n) space: stack holds the roots of the perfect subtrees
// the leaves so far decompose into, largest first (a compact range).
type merkleAcc struct {
	n     uint64
	stack [][32]byte
}

func (m *merkleAcc) reset() { m.n, m.stack = 0, m.stack[:0] }

func (m *merkleAcc) add(h [32]byte) {
	for s := m.n; s&1 == 1; s >>= 1 {
		h = hashChildren(&m.stack[len(m.stack)-1], &h)
		m.stack = m.stack[:len(m.stack)-1]
	}
	m.stack = append(m.stack, h)
	m.n++
}

// root is the tree hash of the leaves added so far.
func (m *merkleAcc) root() [32]byte {
	if len(m.stack) == 0 {
		return sha256.Sum256(nil)
	}
	h := m.stack[len(m.stack)-1]
	for i := len(m.stack) - 2; i >= 0; i-- {
		h = hashChildren(&m.stack[i], &h)
	}
	return h
}

// merkleLevels returns every perfect subtree's hash of the tree over
// leaves: levels[k][i] is the node (level k, index i), which covers leaves
// [i<<k, (i+1)<<k).
func merkleLevels(leaves [][32]byte) [][][32]byte {
	levels := [][][32]byte{leaves}
	for cur := leaves; len(cur) > 1; {
		next := make([][32]byte, len(cur)/2)
		for i := range next {
			next[i] = hashChildren(&cur[2*i], &cur[2*i+1])
		}
		levels = append(levels, next)
		cur = next
	}
	return levels
}
