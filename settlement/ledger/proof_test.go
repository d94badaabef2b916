package ledger

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
)

// The commit path's root (merkleAcc) and the proof path's subtrees
// (merkleLevels) agree with transparency-dev/merkle's RFC 6962 tree for
// every size, and every audit path verifies with the library.
func TestMerkleMatchesLibrary(t *testing.T) {
	rf := &compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	for n := range 70 {
		var acc merkleAcc
		leaves := make([][32]byte, n)
		rng := compact.RangeFactory{Hash: rf.Hash}
		r := rng.NewEmptyRange(0)
		for i := range leaves {
			leaves[i] = sha256.Sum256([]byte{0, byte(i), byte(n)})
			acc.add(leaves[i])
			if err := r.Append(leaves[i][:], nil); err != nil {
				t.Fatal(err)
			}
		}
		want, _ := r.GetRootHash(nil)
		if n == 0 {
			want = rfc6962.DefaultHasher.EmptyRoot()
		}
		got := acc.root()
		if string(got[:]) != string(want) {
			t.Fatalf("n=%d: root %x, library %x", n, got[:4], want[:4])
		}
		if n == 0 {
			continue
		}
		levels := merkleLevels(leaves)
		for i := range leaves {
			path, err := auditPath(levels, uint64(i))
			if err != nil {
				t.Fatal(err)
			}
			p := make([][]byte, len(path))
			for j := range path {
				p[j] = path[j]
			}
			if err := proof.VerifyInclusion(rfc6962.DefaultHasher, uint64(i), uint64(n), leaves[i][:], p, got[:]); err != nil {
				t.Fatalf("n=%d leaf %d: %v", n, i, err)
			}
		}
	}
}

// postingsOf returns, for every posting key with an idempotency record, the
// transfers its records hold (empty for a posting that moved no money).
func postingsOf(t *testing.T, db pebble.Reader) map[string][]TxRecord {
	t.Helper()
	out := map[string][]TxRecord{}
	if err := scanPrefix(db, prefixIdem, func(k string, _ []byte) error {
		out[k] = nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var rec postingRec
	if err := scanPrefix(db, prefixTx, func(k string, v []byte) error {
		seq, err := parseSeq(k)
		if err == nil {
			err = decodePosting(seq, v, &rec)
		}
		if _, ok := out[rec.key]; !ok {
			return nil // a grant: no idempotency record
		}
		for i := range rec.txs {
			out[rec.key] = append(out[rec.key], rec.tx(seq+uint64(i)))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// callBatch posts calls keyed call/<gateway>/<request id>, as settlement
// does, each paying a node and the platform.
func callBatch(t *testing.T, l *Ledger, consumer, gw string, rids ...string) {
	t.Helper()
	var ps []Posting
	for i, rid := range rids {
		p := callPosting("call/"+gw+"/"+rid, consumer, fmt.Sprintf("node:n%d", i%3), int64(100+i), 25)
		p.Transfers[0].Leg, p.Transfers[1].Leg = "provider", "platform"
		ps = append(ps, p)
	}
	res, err := l.PostBatch(ps)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if !r.Applied {
			t.Fatalf("call %s not applied: %v", ps[i].Key, r.Err)
		}
	}
}

// A ledger of many batches (postings, holds, voids, expiries, replays,
// calls through two gateways): every posting that moved money has a proof
// that verifies and shows exactly its transfers, through the open ledger
// and through ProveDir on the closed store.
func TestProveEveryCall(t *testing.T) {
	fs := vfs.NewMem()
	signer, pub := newKeys(1)
	l, err := Open("db", Options{FS: fs, Now: fixedNow, Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	w := newWorkload(21, l)
	w.run(t, 80, false)
	rich, _ := mustCreate(t, l, 10_000_000)
	callBatch(t, l, rich.ID, "gwA", "req_a1", "req_a2", "req_shared", "req_a3", "req_a4")
	w.run(t, 40, false)
	callBatch(t, l, rich.ID, "gwB", "req_b1", "req_shared")
	w.run(t, 40, false)
	if l.Head().Seq < 60 {
		t.Fatalf("only %d chain links", l.Head().Seq)
	}

	want := postingsOf(t, l.db)
	proved := 0
	for key, txs := range want {
		p, err := l.Prove(key)
		if len(txs) == 0 {
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("Prove(%q), a posting that moved no money: %v", key, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("Prove(%q): %v", key, err)
		}
		if err := VerifyProof(p, pub); err != nil {
			t.Fatalf("VerifyProof(%q): %v", key, err)
		}
		var got []TxRecord
		for _, lf := range p.Leaves {
			got = append(got, lf.Transfer)
		}
		if !reflect.DeepEqual(got, txs) || p.Key != key {
			t.Fatalf("proof of %q shows %+v, want %+v", key, got, txs)
		}
		proved++
	}
	if proved < 100 {
		t.Fatalf("only %d postings proved", proved)
	}

	// By request id alone, under any gateway.
	p, err := l.Prove("req_a3")
	if err != nil || p.Key != "call/gwA/req_a3" || len(p.Leaves) != 2 || VerifyProof(p, pub) != nil {
		t.Fatalf("Prove(req_a3) = %+v, %v", p, err)
	}
	if p, err := l.Prove("req_b1"); err != nil || p.Key != "call/gwB/req_b1" {
		t.Fatalf("Prove(req_b1) = %+v, %v", p, err)
	}
	if _, err := l.Prove("req_shared"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Prove of a request id two gateways settled: %v", err)
	}
	if ps, err := l.Proofs("req_shared"); err != nil || len(ps) != 2 || ps[0].Key != "call/gwA/req_shared" || ps[1].Key != "call/gwB/req_shared" {
		t.Fatalf("Proofs(req_shared) = %d, %v", len(ps), err)
	}
	for _, id := range []string{"req_nope", "", "call/gwA", "req_a"} {
		if _, err := l.Prove(id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Prove(%q) = %v, want ErrNotFound", id, err)
		}
	}

	// A proof survives JSON (it is served over HTTP).
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var back Proof
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if err := VerifyProof(&back, pub); err != nil {
		t.Fatalf("after JSON: %v\n%s", err, raw)
	}

	// The closed store, read-only, gives the same proofs.
	live, _ := l.Prove("req_b1")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Prove("req_b1"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Prove after Close: %v", err)
	}
	dir, err := ProveDir("db", Options{FS: fs}, "req_b1")
	if err != nil || !reflect.DeepEqual(dir, live) {
		t.Fatalf("ProveDir = %+v, %v; want %+v", dir, err, live)
	}
	if _, err := ProveDir("db", Options{FS: fs}, "req_nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ProveDir(unknown) = %v", err)
	}
	if _, err := Verify("db", Options{FS: fs}, pub); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

// clone deep-copies a proof through JSON.
func clone(t *testing.T, p *Proof) *Proof {
	t.Helper()
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var c Proof
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	return &c
}

// Every part of a proof matters: a changed leaf, path, root, link field,
// signature or shown transfer, or another key, fails VerifyProof.
func TestProofTampering(t *testing.T) {
	fs := vfs.NewMem()
	signer, pub := newKeys(1)
	l, err := Open("db", Options{FS: fs, Now: fixedNow, Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, _ := mustCreate(t, l, 1_000_000)
	var rids []string
	for i := range 13 {
		rids = append(rids, fmt.Sprintf("req_%d", i))
	}
	callBatch(t, l, a.ID, "gw", rids...)
	good, err := l.Prove("req_6")
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyProof(good, pub); err != nil {
		t.Fatal(err)
	}
	if good.TreeSize != 26 || len(good.Leaves) != 2 || len(good.Leaves[0].Path) < 4 {
		t.Fatalf("proof of %d leaves in a tree of %d, path %d", len(good.Leaves), good.TreeSize, len(good.Leaves[0].Path))
	}
	other, _ := l.Prove("req_7")
	tamper := map[string]func(p *Proof){
		"leaf byte": func(p *Proof) { p.Leaves[0].Leaf[len(p.Leaves[0].Leaf)/2] ^= 1 },
		"leaf amount": func(p *Proof) { // a consistent leaf and transfer that the tree does not hold
			tr := &p.Leaves[0].Transfer
			tr.Amount *= 10
			leg := strings.TrimPrefix(tr.ID, tr.Key+"/")
			p.Leaves[0].Leaf = appendLeaf(nil, tr.Seq, tr.Key, leg, len(p.Leaves), tr.From, tr.To, tr.Amount, tr.Kind, tr.Time.UnixNano())
		},
		"shown amount":     func(p *Proof) { p.Leaves[1].Transfer.Amount++ },
		"a leg left out":   func(p *Proof) { p.Leaves = p.Leaves[:1] },
		"shown account":    func(p *Proof) { p.Leaves[0].Transfer.To = "acct_thief" },
		"path element":     func(p *Proof) { p.Leaves[1].Path[2][5] ^= 0x40 },
		"path shortened":   func(p *Proof) { p.Leaves[0].Path = p.Leaves[0].Path[:len(p.Leaves[0].Path)-1] },
		"path extended":    func(p *Proof) { p.Leaves[0].Path = append(p.Leaves[0].Path, p.Leaves[0].Path[0]) },
		"index":            func(p *Proof) { p.Leaves[0].Index++ },
		"root":             func(p *Proof) { p.Link.Root[0] ^= 1 },
		"tree size":        func(p *Proof) { p.TreeSize++ },
		"signature":        func(p *Proof) { p.Link.Sig[3] ^= 1 },
		"no signature":     func(p *Proof) { p.Link.Sig = nil },
		"link seq":         func(p *Proof) { p.Link.Seq++ },
		"link prev":        func(p *Proof) { p.Link.Prev[31] ^= 1 },
		"link time":        func(p *Proof) { p.Link.Time++ },
		"event sum":        func(p *Proof) { p.Link.EventSum[0] ^= 1 },
		"event count":      func(p *Proof) { p.Link.Events++ },
		"link hash":        func(p *Proof) { p.Link.Hash[0] ^= 1 },
		"first tx":         func(p *Proof) { p.Link.FirstTx++ },
		"key":              func(p *Proof) { p.Key = "call/gw/req_7" },
		"leaf of another":  func(p *Proof) { p.Leaves[0] = other.Leaves[0] },
		"no leaves":        func(p *Proof) { p.Leaves = nil },
		"repeated leaf":    func(p *Proof) { p.Leaves[1] = p.Leaves[0] },
		"short root":       func(p *Proof) { p.Link.Root = p.Link.Root[:31] },
		"leaf version":     func(p *Proof) { p.Leaves[0].Leaf[0] = 1 },
		"leaf trailing":    func(p *Proof) { p.Leaves[0].Leaf = append(p.Leaves[0].Leaf, 0) },
		"re-signed, other": func(p *Proof) { s, _ := newKeys(9); p.Link.Sig, _ = s.Sign(p.Link.Hash) },
	}
	for name, fn := range tamper {
		p := clone(t, good)
		fn(p)
		if err := VerifyProof(p, pub); !errors.Is(err, ErrBadProof) {
			t.Errorf("%s: VerifyProof = %v, want ErrBadProof", name, err)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	_, wrong := newKeys(2)
	if err := VerifyProof(good, wrong); !errors.Is(err, ErrBadProof) {
		t.Errorf("another key: %v", err)
	}
	if err := VerifyProof(good, nil); !errors.Is(err, ErrBadProof) {
		t.Errorf("no key: %v", err)
	}
	if err := VerifyProof(clone(t, good), pub); err != nil {
		t.Fatalf("the untouched clone: %v", err)
	}
}

// Verify recomputes every batch's Merkle root: a stored link whose root is
// changed fails, even with its digest, hash and signature made to match
// (the records no longer give that root).
func TestVerifyChecksMerkleRoot(t *testing.T) {
	base := vfs.NewMem()
	buildSigned(t, base, "db", 13)
	signer, pub := newKeys(1)
	// The first link that moves money.
	pick := func(db *pebble.DB) (ChainLink, error) {
		var c ChainLink
		err := scanPrefix(db, prefixLink, func(_ string, v []byte) error {
			d, err := decodeLink(v)
			if err == nil && c.Seq == 0 && d.LastTx != 0 {
				c = d
			}
			return err
		})
		if err == nil && (c.Seq == 0 || c.Version != 2) {
			err = fmt.Errorf("no version 2 link with transfers: %+v", c)
		}
		return c, err
	}
	for _, resign := range []bool{false, true} {
		fs := vfs.NewMem()
		if _, err := vfs.Clone(base, fs, "db", "db"); err != nil {
			t.Fatal(err)
		}
		rewrite(t, fs, "db", func(db *pebble.DB) error {
			c, err := pick(db)
			if err != nil {
				return err
			}
			c.Root[0] ^= 0x10
			if resign {
				c.Digest = linkDigestV2(c.LastTx-c.FirstTx+1, c.Root, 0, c.EventSum)
				if c.LastEvent != 0 {
					c.Digest = linkDigestV2(c.LastTx-c.FirstTx+1, c.Root, c.LastEvent-c.FirstEvent+1, c.EventSum)
				}
				c.Hash = linkHash(c.Prev, c.Digest, c.Seq, c.Time)
				c.Sig, _ = signer.Sign(c.Hash[:])
			}
			return db.Set(linkKey(c.Seq), appendLink(nil, &c), pebble.Sync)
		})
		_, err := Verify("db", Options{FS: fs}, pub)
		if !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "Merkle root") {
			t.Fatalf("resign=%v: Verify = %v, want a Merkle root mismatch", resign, err)
		}
		t.Logf("resign=%v: %v", resign, err)
	}
}

// A store begun with version 1 links (before Merkle roots) and continued
// with version 2 verifies as a whole; its old calls are ErrUnprovable,
// its new ones prove.
func TestOldLinksVerifyAndNewOnesProve(t *testing.T) {
	fs := vfs.NewMem()
	signer, pub := newKeys(1)
	l, err := Open("db", Options{FS: fs, Now: fixedNow, Signer: signer, linkVersion: 1})
	if err != nil {
		t.Fatal(err)
	}
	w := newWorkload(5, l)
	w.run(t, 40, false)
	rich, _ := mustCreate(t, l, 1_000_000)
	callBatch(t, l, rich.ID, "gw", "req_old")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify("db", Options{FS: fs}, pub); err != nil {
		t.Fatalf("version 1 store: %v", err)
	}
	l, err = Open("db", Options{FS: fs, Now: fixedNow, Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	w.l = l
	w.run(t, 40, false)
	callBatch(t, l, rich.ID, "gw", "req_new")
	if _, err := l.Prove("req_old"); !errors.Is(err, ErrUnprovable) {
		t.Fatalf("Prove(old call) = %v, want ErrUnprovable", err)
	}
	if _, err := l.Proofs("req_old"); !errors.Is(err, ErrUnprovable) {
		t.Fatalf("Proofs(old call) = %v, want ErrUnprovable", err)
	}
	p, err := l.Prove("req_new")
	if err != nil || VerifyProof(p, pub) != nil {
		t.Fatalf("Prove(new call) = %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	versions := map[byte]int{}
	rewrite(t, fs, "db", func(db *pebble.DB) error {
		return scanPrefix(db, prefixLink, func(_ string, v []byte) error {
			c, err := decodeLink(v)
			versions[c.Version]++
			return err
		})
	})
	if versions[1] < 10 || versions[2] < 10 {
		t.Fatalf("link versions %v", versions)
	}
	if rep, err := Verify("db", Options{FS: fs}, pub); err != nil {
		t.Fatalf("mixed store: %v", err)
	} else {
		t.Logf("mixed store verifies: %+v, link versions %v", rep, versions)
	}
}

// Prove finds a call's link by binary search among many links that move
// no money (holds): every call of a long, hold-heavy chain proves.
func TestProveAmongHoldLinks(t *testing.T) {
	fs := vfs.NewMem()
	signer, pub := newKeys(1)
	l, err := Open("db", Options{FS: fs, Now: fixedNow, Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, _ := mustCreate(t, l, 100_000_000)
	rng := rand.New(rand.NewPCG(3, 4))
	var rids []string
	for i := range 60 {
		for range rng.IntN(6) {
			if _, err := l.Hold(fmt.Sprintf("h%d-%d", i, rng.Int()), a.ID, "gw", 10, fixedNow().Add(3600e9)); err != nil {
				t.Fatal(err)
			}
		}
		rid := fmt.Sprintf("req_%d", i)
		rids = append(rids, rid)
		callBatch(t, l, a.ID, "gw", rid)
	}
	for _, rid := range rids {
		p, err := l.Prove(rid)
		if err != nil {
			t.Fatalf("Prove(%s): %v", rid, err)
		}
		if err := VerifyProof(p, pub); err != nil {
			t.Fatalf("VerifyProof(%s): %v", rid, err)
		}
	}
}
