package ledger

import (
	"fmt"
	"hash/maphash"

	"github.com/cockroachdb/pebble/v2"
)

// idemFilter is an in-memory approximate-membership filter over every
// idempotency key in the store (every i/<key> record). Almost every posting
// carries a new key, and without the filter each one costs a Pebble Get that
// searches every memtable and L0 file before it can say "absent". The
// filter answers "definitely absent" for almost all of them; "maybe present"
// falls back to the Get, so correctness never depends on the filter beyond
// its one guarantee: no false negatives. Every key written to the store is
// added to the filter before the batch holding it becomes readable (see
// Ledger.run), and Open rebuilds it by scanning i/.
//
// It is a split-block Bloom filter (as in Parquet): each key sets one bit in
// each of the eight 32-bit words of one 256-bit block, so a query touches a
// single cache line. It grows by layers: when the newest layer holds its
// capacity, a layer of twice the capacity is added; a query checks each
// layer. Open sizes the first layer for twice the keys it finds, so a
// reopened ledger usually has one or two layers.
//
// It is guarded by Ledger.wmu.
type idemFilter struct {
	seed   maphash.Seed
	layers []filterLayer
	n      int // keys added
}

type filterLayer struct {
	blocks []filterBlock
	n, cap int
}

type filterBlock [8]uint32

const (
	// filterBitsPerKey gives a false-positive rate near 0.3% per full layer.
	filterBitsPerKey = 16
	// filterMinCap is the smallest layer capacity.
	filterMinCap = 1 << 16
)

// The SBBF salts (Parquet's split block Bloom filter).
var filterSalt = [8]uint32{0x47b6137b, 0x44974d91, 0x8824ad5b, 0xa2b7289d,
	0x705495c7, 0x2df1424b, 0x9efc4947, 0x5c6bfb31}

func newIdemFilter(expected int) *idemFilter {
	f := &idemFilter{seed: maphash.MakeSeed()}
	f.grow(max(expected, filterMinCap))
	return f
}

func (f *idemFilter) grow(capacity int) {
	nblocks := (capacity*filterBitsPerKey + 255) / 256
	f.layers = append(f.layers, filterLayer{blocks: make([]filterBlock, nblocks), cap: capacity})
}

func (f *idemFilter) hash(key string) uint64 { return maphash.String(f.seed, key) }

// mask returns the bit of each word of a block that h sets.
func filterMask(h uint32) (m filterBlock) {
	for i := range m {
		m[i] = 1 << ((h * filterSalt[i]) >> 27)
	}
	return m
}

func (l *filterLayer) block(h uint64) *filterBlock {
	return &l.blocks[((h>>32)*uint64(len(l.blocks)))>>32]
}

// add records key.
func (f *idemFilter) add(key string) { f.addHash(f.hash(key)) }

func (f *idemFilter) addHash(h uint64) {
	last := &f.layers[len(f.layers)-1]
	if last.n >= last.cap {
		f.grow(2 * last.cap)
		last = &f.layers[len(f.layers)-1]
	}
	m := filterMask(uint32(h))
	b := last.block(h)
	for i := range b {
		b[i] |= m[i]
	}
	last.n++
	f.n++
}

// mayContain is false only if key was never added.
func (f *idemFilter) mayContain(key string) bool {
	h := f.hash(key)
	m := filterMask(uint32(h))
outer:
	for i := range f.layers {
		b := f.layers[i].block(h)
		for j := range b {
			if b[j]&m[j] == 0 {
				continue outer
			}
		}
		return true
	}
	return false
}

// loadIdemFilter builds a filter over every idempotency key in db.
func loadIdemFilter(db pebble.Reader) (*idemFilter, error) {
	f := &idemFilter{seed: maphash.MakeSeed()}
	var hashes []uint64
	err := scanKeys(db, prefixIdem, func(k []byte) { hashes = append(hashes, maphash.Bytes(f.seed, k)) })
	if err != nil {
		return nil, err
	}
	f.grow(max(2*len(hashes), filterMinCap))
	for _, h := range hashes {
		f.addHash(h)
	}
	return f, nil
}

// scanKeys calls fn with every key under prefix, minus the prefix; k is only
// valid during the call. Values are not read.
func scanKeys(db pebble.Reader, prefix string, fn func(k []byte)) error {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefix), UpperBound: prefixEnd(prefix)})
	if err != nil {
		return fmt.Errorf("ledger: scan %s: %w", prefix, err)
	}
	for it.First(); it.Valid(); it.Next() {
		fn(it.Key()[len(prefix):])
	}
	if err := closeIter(it); err != nil {
		return fmt.Errorf("ledger: scan %s: %w", prefix, err)
	}
	return nil
}

func closeIter(it *pebble.Iterator) error {
	err := it.Error()
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	return err
}
