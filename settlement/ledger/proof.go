package ledger

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
)

// ErrBadProof: VerifyProof rejected a proof.
var ErrBadProof = errors.New("ledger: proof does not verify")

// HexBytes is a byte string that is lowercase hex in JSON.
type HexBytes []byte

func (h HexBytes) MarshalText() ([]byte, error) { return hex.AppendEncode(nil, h), nil }

func (h *HexBytes) UnmarshalText(b []byte) error {
	v, err := hex.DecodeString(string(b))
	*h = v
	return err
}

func (h HexBytes) String() string { return hex.EncodeToString(h) }

// Proof shows that the transfers of one posting (a paid call) are in a
// batch the settlement peer signed: each leaf's audit path leads to the
// Merkle root of the batch's transfers, the root is in the chain link's
// Digest and so in its Hash, and the Hash is signed. VerifyProof checks all
// of it with nothing but the settlement peer's public key. It proves
// inclusion in link Link.Seq; that the link is in the chain a verifier
// trusts is the link's Hash and Prev against a head published elsewhere.
type Proof struct {
	// Key is the posting's idempotency key: call/<gateway>/<request id>.
	Key string `json:"key"`
	// TreeSize is the number of transfers the batch committed: the leaves of
	// its Merkle tree.
	TreeSize uint64      `json:"tree_size"`
	Link     ProofLink   `json:"link"`
	Leaves   []ProofLeaf `json:"leaves"`
}

// ProofLink is what of a chain link a verifier needs to recompute its Hash
// from its Merkle root: Hash = SHA-256(Prev || Digest || u64 Seq || u64
// Time), Digest = SHA-256("tokenrouter/ledger/v2" || u64 TreeSize || Root ||
// u64 Events || EventSum).
type ProofLink struct {
	Seq  uint64   `json:"seq"`
	Prev HexBytes `json:"prev"`
	Hash HexBytes `json:"hash"`
	Root HexBytes `json:"root"`
	// Events is the number of hold events of the batch, EventSum their digest.
	Events   uint64   `json:"events"`
	EventSum HexBytes `json:"event_sum"`
	// FirstTx is the sequence number of the batch's first transfer (leaf 0).
	FirstTx uint64   `json:"first_tx"`
	Time    int64    `json:"time_ns"`
	Sig     HexBytes `json:"sig"`
}

// ProofLeaf is one transfer of the posting: its leaf encoding, its index in
// the batch's tree and its audit path (RFC 6962 inclusion proof, bottom
// up). Transfer is Leaf decoded; VerifyProof checks they agree.
type ProofLeaf struct {
	Index    uint64     `json:"index"`
	Leaf     HexBytes   `json:"leaf"`
	Path     []HexBytes `json:"path"`
	Transfer TxRecord   `json:"transfer"`
}

// Prove builds the inclusion proof of a committed call. requestID is the
// gateway's request id (x-tokenrouter-request-id), found under any gateway,
// or a posting's full idempotency key (call/<gateway>/<request id>, or any
// other key). It returns ErrNotFound if no durable posting moved money under
// it, ErrUnprovable if its batch predates Merkle roots, and an error if the
// request id names calls through several gateways (give the full key).
func (l *Ledger) Prove(requestID string) (*Proof, error) {
	src, err := l.proofSource()
	if err != nil {
		return nil, err
	}
	defer src.close()
	return src.proveOne(requestID)
}

// Proofs is Prove for every call the request id names (one per gateway that
// settled a call under it; almost always one). It returns ErrNotFound (or
// ErrUnprovable) if there is none to prove.
func (l *Ledger) Proofs(requestID string) ([]*Proof, error) {
	src, err := l.proofSource()
	if err != nil {
		return nil, err
	}
	defer src.close()
	return src.proveAll(requestID)
}

// proofSource is a snapshot of the published state to build proofs from,
// off the ledger's lock: rebuilding a batch of thousands of transfers must
// not hold back the commits that publish (they take l.mu exclusively).
// The caller closes the snapshot.
func (l *Ledger) proofSource() (*proofSource, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, ErrClosed
	}
	snap := l.db.NewSnapshot()
	l.snapshots.Add(1)
	return &proofSource{db: snap, nextSeq: l.pub.nextSeq, head: l.pub.head.Seq,
		close: func() { snap.Close(); l.snapshots.Done() }}, nil
}

// ProveDir opens the closed ledger in dir read-only (it writes nothing) and
// builds the proof Prove would. Like Verify it first checks that the newest
// WAL ends cleanly, so a damaged store is reported as such rather than as a
// missing call.
func ProveDir(dir string, opts Options, requestID string) (*Proof, error) {
	opts.defaults()
	db, err := pebble.Open(dir, pebbleOptions(opts, true))
	if err != nil {
		return nil, fmt.Errorf("ledger: prove: open %s: %w", dir, err)
	}
	defer db.Close()
	if err := checkWALTail(opts, dir); err != nil {
		return nil, err
	}
	src := &proofSource{db: db, nextSeq: 1}
	if err := getSeq(db, keyNextSeq, &src.nextSeq); err != nil {
		return nil, err
	}
	head, err := lastLink(db)
	if err != nil {
		return nil, err
	}
	src.head = head.Seq
	return src.proveOne(requestID)
}

// proofSource reads proofs from a store, ignoring what is not durable:
// transfers from nextSeq and links after head.
type proofSource struct {
	db      pebble.Reader
	nextSeq uint64
	head    uint64
	close   func() // releases db when it is a snapshot
}

func (s *proofSource) proveOne(requestID string) (*Proof, error) {
	keys, err := s.keys(requestID)
	if err != nil {
		return nil, err
	}
	switch len(keys) {
	case 0:
		return nil, fmt.Errorf("%w: %q", ErrNotFound, requestID)
	case 1:
		return s.prove(keys[0])
	}
	return nil, fmt.Errorf("%w: request id %q names calls through %d gateways (%s); give the full key",
		ErrInvalid, requestID, len(keys), strings.Join(keys, ", "))
}

func (s *proofSource) proveAll(requestID string) ([]*Proof, error) {
	keys, err := s.keys(requestID)
	if err != nil {
		return nil, err
	}
	var out []*Proof
	skipped := fmt.Errorf("%w: %q", ErrNotFound, requestID)
	for _, k := range keys {
		p, err := s.prove(k)
		switch {
		case errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnprovable):
			skipped = err
		case err != nil:
			return nil, err
		default:
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, skipped
	}
	return out, nil
}

// callPrefix starts the idempotency record of every settled call:
// i/call/<gateway>/<request id>.
const callPrefix = prefixIdem + "call/"

// keys returns the posting keys requestID names: itself if it is a key,
// else call/<gateway>/<requestID> for every gateway that has one. Gateways
// are skipped over with one seek each, so the cost is one seek per gateway
// that ever settled a call, not a scan.
func (s *proofSource) keys(requestID string) ([]string, error) {
	if requestID == "" {
		return nil, nil
	}
	if _, found, err := lookupIdem(s.db, idemKey(requestID)); err != nil || found {
		if found {
			return []string{requestID}, nil
		}
		return nil, err
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte(callPrefix), UpperBound: prefixEnd(callPrefix)})
	if err != nil {
		return nil, fmt.Errorf("ledger: prove: %w", err)
	}
	var out []string
	for valid := it.First(); valid; {
		rest := it.Key()[len(callPrefix):]
		j := bytes.IndexByte(rest, '/')
		if j < 0 {
			valid = it.Next()
			continue
		}
		gw := string(rest[:j])
		want := callPrefix + gw + "/" + requestID
		if it.SeekGE([]byte(want)) && string(it.Key()) == want {
			out = append(out, want[len(prefixIdem):])
		}
		valid = it.SeekGE([]byte(callPrefix + gw + "0")) // '0' follows '/': past this gateway
	}
	if err := closeIter(it); err != nil {
		return nil, fmt.Errorf("ledger: prove: %w", err)
	}
	return out, nil
}

// prove builds the proof of the posting under key.
func (s *proofSource) prove(key string) (*Proof, error) {
	rec, found, err := lookupIdem(s.db, idemKey(key))
	if err != nil {
		return nil, err
	}
	if !found || rec.seq >= s.nextSeq {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	c, err := s.linkFor(rec.seq)
	if err != nil {
		return nil, err
	}
	if c.Version < recordLinkV2 {
		return nil, fmt.Errorf("%w: %q is in chain link %d", ErrUnprovable, key, c.Seq)
	}
	n := c.LastTx - c.FirstTx + 1
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: txKey(c.FirstTx), UpperBound: txKey(c.LastTx + 1)})
	if err != nil {
		return nil, fmt.Errorf("ledger: prove: %w", err)
	}
	leaves := make([][32]byte, 0, n)
	var mine []ProofLeaf
	var prec postingRec
	var buf []byte
	for it.First(); it.Valid(); it.Next() {
		first, err := parseSeq(string(it.Key()[len(prefixTx):]))
		var v []byte
		if err == nil {
			v, err = it.ValueAndErr()
		}
		if err == nil {
			err = decodePosting(first, v, &prec)
		}
		if err == nil && (prec.first != first || first != c.FirstTx+uint64(len(leaves))) {
			err = fmt.Errorf("record %d out of place", first)
		}
		if err != nil {
			return nil, errors.Join(fmt.Errorf("%w: transfer record %q: %v", ErrCorrupt, it.Key(), err), it.Close())
		}
		for i, e := range prec.txs {
			seq := first + uint64(i)
			var h [32]byte
			h, buf = leafHash(buf, seq, prec.key, e.leg, len(prec.txs), e.from, e.to, e.amount, e.kind, prec.time)
			if prec.key == key {
				mine = append(mine, ProofLeaf{
					Index:    uint64(len(leaves)),
					Leaf:     appendLeaf(nil, seq, prec.key, e.leg, len(prec.txs), e.from, e.to, e.amount, e.kind, prec.time),
					Transfer: prec.tx(seq),
				})
			}
			leaves = append(leaves, h)
		}
	}
	if err := closeIter(it); err != nil {
		return nil, fmt.Errorf("ledger: prove: %w", err)
	}
	if uint64(len(leaves)) != n {
		return nil, fmt.Errorf("%w: chain link %d covers %d transfers, the store holds %d", ErrTampered, c.Seq, n, len(leaves))
	}
	if len(mine) == 0 { // a posting that moved no money points at the next one's transfers
		return nil, fmt.Errorf("%w: %q moved no money", ErrNotFound, key)
	}
	var acc merkleAcc
	for _, h := range leaves {
		acc.add(h)
	}
	if root := acc.root(); root != c.Root {
		return nil, fmt.Errorf("%w: chain link %d: transfers' Merkle root is %x, link says %x", ErrTampered, c.Seq, root[:6], c.Root[:6])
	}
	levels := merkleLevels(leaves)
	for i := range mine {
		if mine[i].Path, err = auditPath(levels, mine[i].Index); err != nil {
			return nil, err
		}
	}
	var events uint64
	if c.LastEvent != 0 {
		events = c.LastEvent - c.FirstEvent + 1
	}
	return &Proof{
		Key:      key,
		TreeSize: n,
		Link: ProofLink{Seq: c.Seq, Prev: c.Prev[:], Hash: c.Hash[:], Root: c.Root[:], Events: events,
			EventSum: c.EventSum[:], FirstTx: c.FirstTx, Time: c.Time, Sig: c.Sig},
		Leaves: mine,
	}, nil
}

// auditPath is the RFC 6962 inclusion proof of leaf index in the tree
// whose perfect subtrees are levels (see merkleLevels).
func auditPath(levels [][][32]byte, index uint64) ([]HexBytes, error) {
	nodes, err := proof.Inclusion(index, uint64(len(levels[0])))
	if err != nil {
		return nil, err
	}
	hashes := make([][]byte, len(nodes.IDs))
	for j, id := range nodes.IDs {
		hashes[j] = append([]byte(nil), levels[id.Level][id.Index][:]...)
	}
	path, err := nodes.Rehash(hashes, rfc6962.DefaultHasher.HashChildren)
	if err != nil {
		return nil, err
	}
	out := make([]HexBytes, len(path))
	for j, h := range path {
		out[j] = h
	}
	return out, nil
}

// linkFor returns the durable chain link whose batch holds transfer seq,
// by binary search over the links (a link that moves no money, such as a
// hold's, stands for the next one that does).
func (s *proofSource) linkFor(seq uint64) (ChainLink, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixLink), UpperBound: prefixEnd(prefixLink)})
	if err != nil {
		return ChainLink{}, fmt.Errorf("ledger: prove: %w", err)
	}
	defer it.Close()
	// probe returns the first link at or after from that moves money.
	probe := func(from uint64) (ChainLink, bool, error) {
		for valid := it.SeekGE(linkKey(from)); valid; valid = it.Next() {
			v, err := it.ValueAndErr()
			if err != nil {
				return ChainLink{}, false, err
			}
			c, err := decodeLink(v)
			if err != nil {
				return ChainLink{}, false, fmt.Errorf("%w: chain link %q: %v", ErrCorrupt, it.Key(), err)
			}
			if c.Seq > s.head {
				break
			}
			if c.LastTx != 0 {
				return c, true, nil
			}
		}
		return ChainLink{}, false, it.Error()
	}
	var best ChainLink
	for lo, hi := uint64(1), s.head+1; lo < hi; {
		mid := lo + (hi-lo)/2
		c, ok, err := probe(mid)
		switch {
		case err != nil:
			return ChainLink{}, err
		case !ok:
			hi = mid
		case c.LastTx >= seq:
			best, hi = c, mid
		default:
			lo = c.Seq + 1
		}
	}
	if best.Seq == 0 || best.FirstTx > seq {
		return ChainLink{}, fmt.Errorf("%w: no chain link covers transfer %d", ErrCorrupt, seq)
	}
	return best, nil
}

// VerifyProof checks p with nothing but the settlement peer's public key
// (a libp2p crypto.PubKey is a Verifier): every leaf decodes to the
// transfer it shows, belongs to p.Key, and its audit path leads to the
// Merkle root; the link's Hash is recomputed from the root and its other
// fields, and its signature checks against pub. Any failure wraps
// ErrBadProof.
func VerifyProof(p *Proof, pub Verifier) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadProof, fmt.Sprintf(format, args...))
	}
	switch {
	case p == nil:
		return bad("no proof")
	case pub == nil:
		return bad("no public key to check the signature with")
	case len(p.Leaves) == 0:
		return bad("no leaves")
	}
	k := &p.Link
	var prev, root, evSum, hash [32]byte
	for _, f := range []struct {
		name string
		dst  *[32]byte
		src  HexBytes
	}{{"prev", &prev, k.Prev}, {"root", &root, k.Root}, {"event_sum", &evSum, k.EventSum}, {"hash", &hash, k.Hash}} {
		if len(f.src) != 32 {
			return bad("link %s is %d bytes, want 32", f.name, len(f.src))
		}
		copy(f.dst[:], f.src)
	}
	want := linkHash(prev, linkDigestV2(p.TreeSize, root, k.Events, evSum), k.Seq, k.Time)
	if want != hash {
		return bad("link %d: its fields hash to %x, not to its hash %x", k.Seq, want[:6], hash[:6])
	}
	if ok, err := pub.Verify(hash[:], k.Sig); err != nil || !ok {
		return bad("link %d: the signature does not check against the settlement key (%v)", k.Seq, err)
	}
	seen := map[uint64]bool{}
	for i := range p.Leaves {
		lf := &p.Leaves[i]
		if lf.Index >= p.TreeSize || seen[lf.Index] {
			return bad("leaf %d: index %d repeated or outside a tree of %d", i, lf.Index, p.TreeSize)
		}
		seen[lf.Index] = true
		tr, legs, err := decodeLeaf(lf.Leaf)
		if err != nil {
			return bad("leaf %d does not decode: %v", i, err)
		}
		// Every leg of the call, each once: a posting's transfers are
		// consecutive, and each leaf names how many there are.
		if legs != uint64(len(p.Leaves)) {
			return bad("leaf %d is one of %d transfers of %q; the proof shows %d", i, legs, p.Key, len(p.Leaves))
		}
		if lf.Index < p.Leaves[0].Index || lf.Index-p.Leaves[0].Index >= legs {
			return bad("leaf %d: index %d is not among the call's %d consecutive transfers", i, lf.Index, legs)
		}
		if tr.Key != p.Key {
			return bad("leaf %d is transfer %q, not one of %q", i, tr.ID, p.Key)
		}
		if tr.Seq != k.FirstTx+lf.Index {
			return bad("leaf %d is transfer %d, at index %d of a batch from %d", i, tr.Seq, lf.Index, k.FirstTx)
		}
		if s := lf.Transfer; s.Seq != tr.Seq || s.ID != tr.ID || s.Key != tr.Key || s.From != tr.From || s.To != tr.To ||
			s.Amount != tr.Amount || s.Kind != tr.Kind || !s.Time.Equal(tr.Time) {
			return bad("leaf %d: the transfer shown is not the one in the leaf", i)
		}
		path := make([][]byte, len(lf.Path))
		for j, h := range lf.Path {
			path[j] = h
		}
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, lf.Index, p.TreeSize,
			rfc6962.DefaultHasher.HashLeaf(lf.Leaf), path, root[:]); err != nil {
			var m proof.RootMismatchError
			if errors.As(err, &m) {
				return bad("leaf %d (%s): its audit path leads to root %x, not to the link's %x", i, tr.ID, m.CalculatedRoot, root)
			}
			return bad("leaf %d (%s): %v", i, tr.ID, err)
		}
	}
	return nil
}
