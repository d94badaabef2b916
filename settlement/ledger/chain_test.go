package ledger

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// workload drives a ledger through a seeded mix of every kind of write:
// account creation, PostBatch (with conflicts, replays, overdrafts and
// postings drawing from holds), holds, extensions, voids and expiries. Each
// step calls check (if not nil) after it returns.
type workload struct {
	rng       *rand.Rand
	l         *Ledger
	consumers []string
	holds     []string
	postings  []Posting // every posting ever offered, for replays
	clock     time.Time
	n         int
}

func newWorkload(seed uint64, l *Ledger) *workload {
	return &workload{rng: rand.New(rand.NewPCG(seed, 0xc4a1)), l: l, clock: fixedNow()}
}

// step performs one random operation; errors a workload expects (funds,
// conflicts, closed holds) are fine, anything else is returned.
func (w *workload) step() error {
	w.n++
	r := w.rng
	if len(w.consumers) < 3 || r.IntN(20) == 0 {
		st, _, err := w.l.CreateAccount(int64(r.IntN(4)) * 40_000)
		if err != nil {
			return err
		}
		w.consumers = append(w.consumers, st.ID)
		return nil
	}
	c := w.consumers[r.IntN(len(w.consumers))]
	switch op := r.IntN(10); {
	case op < 5:
		batch := make([]Posting, 1+r.IntN(12))
		for i := range batch {
			if len(w.postings) > 0 && r.IntN(6) == 0 {
				batch[i] = w.postings[r.IntN(len(w.postings))] // replay
				continue
			}
			p := callPosting(fmt.Sprintf("req-%d-%d", w.n, i), c, fmt.Sprintf("node:n%d", r.IntN(4)), int64(r.IntN(900)), int64(r.IntN(300)))
			p.Transfers[0].Leg, p.Transfers[1].Leg = "provider", "platform"
			if r.IntN(3) == 0 {
				p.Transfers = append(p.Transfers, Transfer{From: AccountPlatform, To: p.Transfers[0].To, Amount: int64(r.IntN(50)), Kind: KindBounty, Leg: "bounty"})
			}
			if len(w.holds) > 0 && r.IntN(2) == 0 {
				h := w.holds[r.IntN(len(w.holds))]
				if hs, ok := w.l.HoldInfo(h); ok && hs.Account == c {
					p.Hold = h
				}
			}
			if r.IntN(15) == 0 && i > 0 {
				p.Key = batch[i-1].Key // same key in the batch, other payload
			}
			batch[i] = p
			w.postings = append(w.postings, p)
		}
		res, err := w.l.PostBatch(batch)
		if err != nil {
			return err
		}
		for i, br := range res {
			if br.Err != nil && !errors.Is(br.Err, ErrInsufficientFunds) && !errors.Is(br.Err, ErrConflict) {
				return fmt.Errorf("posting %q: %w", batch[i].Key, br.Err)
			}
		}
	case op < 7:
		id := fmt.Sprintf("hold-%d", w.n)
		if _, err := w.l.Hold(id, c, "gw", int64(1+r.IntN(3000)), w.clock.Add(time.Duration(r.IntN(60))*time.Second)); err == nil {
			w.holds = append(w.holds, id)
		} else if !errors.Is(err, ErrInsufficientFunds) {
			return err
		}
	case op < 8 && len(w.holds) > 0:
		h := w.holds[r.IntN(len(w.holds))]
		_, err := w.l.ExtendHold(h, int64(r.IntN(500)), w.clock.Add(time.Duration(r.IntN(90))*time.Second))
		if err != nil && !errors.Is(err, ErrInsufficientFunds) && !errors.Is(err, ErrHoldClosed) {
			return err
		}
	case op < 9 && len(w.holds) > 0:
		if _, err := w.l.VoidHold(w.holds[r.IntN(len(w.holds))]); err != nil {
			return err
		}
	default:
		w.clock = w.clock.Add(time.Duration(r.IntN(20)) * time.Second)
		if _, err := w.l.ExpireHolds(w.clock); err != nil {
			return err
		}
	}
	return nil
}

func (w *workload) run(t testing.TB, steps int, check bool) {
	t.Helper()
	for range steps {
		if err := w.step(); err != nil {
			t.Fatalf("step %d: %v", w.n, err)
		}
		if check {
			checkInvariants(t, w.l)
		}
	}
}

// buildSigned runs a signed workload into dir on fs and closes the ledger.
func buildSigned(t *testing.T, fs vfs.FS, dir string, seed uint64) {
	t.Helper()
	buildSignedLinks(t, fs, dir, seed, 0)
}

// buildSignedLinks is buildSigned with chain links of version v (0: the
// current one).
func buildSignedLinks(t *testing.T, fs vfs.FS, dir string, seed uint64, v byte) {
	t.Helper()
	signer, _ := newKeys(1)
	l, err := Open(dir, Options{FS: fs, Now: fixedNow, Signer: signer, linkVersion: v})
	if err != nil {
		t.Fatal(err)
	}
	// Two sessions: Pebble flushes the first one's WAL into an sstable when
	// the second opens, and the second one's records stay in the WAL.
	w := newWorkload(seed, l)
	w.run(t, 60, true)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if l, err = Open(dir, Options{FS: fs, Now: fixedNow, Signer: signer, linkVersion: v}); err != nil {
		t.Fatal(err)
	}
	w.l = l
	w.run(t, 60, true)
	if l.Head().Seq < 40 {
		t.Fatalf("only %d chain links", l.Head().Seq)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyCleanLedger(t *testing.T) {
	fs := vfs.NewMem()
	buildSigned(t, fs, "db", 1)
	_, pub := newKeys(1)
	rep, err := Verify("db", Options{FS: fs}, pub)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.Links < 40 || rep.Transfers == 0 || rep.Holds == 0 || rep.Accounts < 6 {
		t.Fatalf("report %+v", rep)
	}
	l := openLedger(t, fs, "db")
	if h := l.Head(); h.Hash != rep.Head || int(h.Seq) != rep.Links {
		t.Fatalf("head %d %x, report %+v", h.Seq, h.Hash[:4], rep)
	}
	checkInvariants(t, l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Verify wrote nothing and is repeatable; without a key it checks all
	// but signatures; with another key it fails.
	if rep2, err := Verify("db", Options{FS: fs}, nil); err != nil || rep2 != rep {
		t.Fatalf("Verify(nil) = %+v, %v", rep2, err)
	}
	_, other := newKeys(2)
	if _, err := Verify("db", Options{FS: fs}, other); !errors.Is(err, ErrTampered) {
		t.Fatalf("Verify with another key err = %v", err)
	}
	// An unsigned ledger fails verification against a key.
	ufs := vfs.NewMem()
	u := openLedger(t, ufs, "db")
	newWorkload(3, u).run(t, 20, false)
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify("db", Options{FS: ufs}, nil); err != nil {
		t.Fatalf("unsigned Verify(nil): %v", err)
	}
	if _, err := Verify("db", Options{FS: ufs}, other); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "not signed") {
		t.Fatalf("unsigned Verify(key) err = %v", err)
	}
}

// rewrite applies fn to the store in dir through Pebble directly.
func rewrite(t *testing.T, fs vfs.FS, dir string, fn func(db *pebble.DB) error) {
	t.Helper()
	db, err := pebble.Open(dir, &pebble.Options{FS: fs, Logger: pebbleLogger{slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := fn(db); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func get(db *pebble.DB, key []byte) ([]byte, error) {
	v, closer, err := db.Get(key)
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return append([]byte(nil), v...), nil
}

// someAccount returns a user account with a positive balance.
func someAccount(db *pebble.DB) (AccountState, error) {
	var out AccountState
	err := scanPrefix(db, prefixAccount, func(k string, v []byte) error {
		st, err := decodeAccount(v)
		if err == nil && strings.HasPrefix(k, "acct_") && st.Balance > 0 && out.ID == "" {
			out = st
		}
		return err
	})
	if out.ID == "" && err == nil {
		err = errors.New("no funded account")
	}
	return out, err
}

func TestVerifyDetectsTampering(t *testing.T) {
	mid := func(db *pebble.DB) uint64 {
		n := uint64(1)
		_ = getSeq(db, keyNextSeq, &n)
		return n / 2
	}
	tamperings := map[string]func(db *pebble.DB) error{
		"account balance": func(db *pebble.DB) error {
			st, err := someAccount(db)
			if err != nil {
				return err
			}
			st.Balance++
			return db.Set(accountKey(st.ID), appendAccount(nil, &st), pebble.Sync)
		},
		"balance moved between accounts": func(db *pebble.DB) error {
			st, err := someAccount(db)
			if err != nil {
				return err
			}
			v, err := get(db, accountKey(AccountPlatform))
			if err != nil {
				return err
			}
			p, err := decodeAccount(v)
			if err != nil {
				return err
			}
			st.Balance--
			p.Balance++
			b := db.NewBatch()
			_ = b.Set(accountKey(st.ID), appendAccount(nil, &st), nil)
			_ = b.Set(accountKey(p.ID), appendAccount(nil, &p), nil)
			return b.Commit(pebble.Sync)
		},
		"held amount": func(db *pebble.DB) error {
			st, err := someAccount(db)
			if err != nil {
				return err
			}
			st.Held++
			return db.Set(accountKey(st.ID), appendAccount(nil, &st), pebble.Sync)
		},
		"transfer amount": func(db *pebble.DB) error {
			first, rec, err := postingAt(db, mid(db))
			if err != nil {
				return err
			}
			rec.txs[len(rec.txs)-1].amount++
			return db.Set(txKey(first), encodePosting(&rec), pebble.Sync)
		},
		"transfer amount moved within a posting": func(db *pebble.DB) error {
			first, rec, err := firstPosting(db, 2)
			if err != nil {
				return err
			}
			rec.txs[0].amount++
			rec.txs[1].amount--
			return db.Set(txKey(first), encodePosting(&rec), pebble.Sync)
		},
		"transfer account swapped": func(db *pebble.DB) error {
			first, rec, err := firstPosting(db, 2)
			if err != nil {
				return err
			}
			rec.txs[0].to, rec.txs[1].to = rec.txs[1].to, rec.txs[0].to
			return db.Set(txKey(first), encodePosting(&rec), pebble.Sync)
		},
		"transfer dropped from a posting": func(db *pebble.DB) error {
			first, rec, err := firstPosting(db, 2)
			if err != nil {
				return err
			}
			rec.txs = rec.txs[:len(rec.txs)-1]
			return db.Set(txKey(first), encodePosting(&rec), pebble.Sync)
		},
		"posting record rekeyed": func(db *pebble.DB) error {
			first, rec, err := firstPosting(db, 2)
			if err != nil {
				return err
			}
			b := db.NewBatch()
			_ = b.Delete(txKey(first), nil)
			_ = b.Set(txKey(first+1), encodePosting(&rec), nil)
			return b.Commit(pebble.Sync)
		},
		"transfer amount in an old-format record": func(db *pebble.DB) error {
			first, rec, err := postingAt(db, mid(db))
			if err != nil {
				return err
			}
			rec.txs[0].amount++
			return splitPosting(db, first, &rec)
		},
		"transfer deleted": func(db *pebble.DB) error {
			first, _, err := postingAt(db, mid(db))
			if err != nil {
				return err
			}
			return db.Delete(txKey(first), pebble.Sync)
		},
		"hold event deleted": func(db *pebble.DB) error {
			return db.Delete(eventKey(1), pebble.Sync)
		},
		"link prev": func(db *pebble.DB) error {
			v, err := get(db, linkKey(3))
			if err != nil {
				return err
			}
			c, err := decodeLink(v)
			if err != nil {
				return err
			}
			c.Prev[0] ^= 1
			return db.Set(linkKey(3), appendLink(nil, &c), pebble.Sync)
		},
		"resigned with another key": func(db *pebble.DB) error {
			attacker, _ := newKeys(9)
			b := db.NewBatch()
			err := scanPrefix(db, prefixLink, func(k string, v []byte) error {
				c, err := decodeLink(v)
				if err != nil {
					return err
				}
				c.Sig, _ = attacker.Sign(c.Hash[:])
				return b.Set([]byte(prefixLink+k), appendLink(nil, &c), nil)
			})
			if err != nil {
				return err
			}
			return b.Commit(pebble.Sync)
		},
		"middle link removed": func(db *pebble.DB) error {
			return db.Delete(linkKey(5), pebble.Sync)
		},
		"last link removed": func(db *pebble.DB) error {
			head, err := lastLink(db)
			if err != nil {
				return err
			}
			return db.Delete(linkKey(head.Seq), pebble.Sync)
		},
		"hold record": func(db *pebble.DB) error {
			var id string
			var h holdRec
			err := scanPrefix(db, prefixHold, func(k string, v []byte) error {
				var err error
				if id == "" {
					id = k
					h, err = decodeHold(k, v)
				}
				return err
			})
			if err != nil {
				return err
			}
			h.Amount++
			return db.Set(holdKey(id), appendHold(nil, &h), pebble.Sync)
		},
	}
	_, pub := newKeys(1)
	base := vfs.NewMem()
	buildSigned(t, base, "db", 7)
	for name, tamper := range tamperings {
		t.Run(name, func(t *testing.T) {
			fs := vfs.NewMem()
			if _, err := vfs.Clone(base, fs, "db", "db"); err != nil {
				t.Fatal(err)
			}
			if _, err := Verify("db", Options{FS: fs}, pub); err != nil {
				t.Fatalf("before tampering: %v", err)
			}
			rewrite(t, fs, "db", tamper)
			_, err := Verify("db", Options{FS: fs}, pub)
			if !errors.Is(err, ErrTampered) {
				t.Fatalf("Verify after tampering = %v, want ErrTampered", err)
			}
			t.Logf("%v", err)
		})
	}
}

// TestVerifyDetectsFlippedByte flips one byte of a closed ledger's files on
// disk — in an sstable or in the newest WAL — and expects Verify to fail.
// The WAL's final 11 bytes are its EOF trailer, whose checksum and length
// Pebble never reads: they carry no data, and a flip there is not flipped.
func TestVerifyDetectsFlippedByte(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	buildSigned(t, vfs.Default, src, 11)
	_, pub := newKeys(1)
	if _, err := Verify(src, Options{}, pub); err != nil {
		t.Fatalf("clean: %v", err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	var targets []string
	newestWAL := ""
	for _, e := range entries {
		switch {
		case strings.HasSuffix(e.Name(), ".sst"):
			targets = append(targets, e.Name())
		case strings.HasSuffix(e.Name(), ".log"):
			newestWAL = max(newestWAL, e.Name())
		}
	}
	if len(targets) == 0 || newestWAL == "" {
		t.Fatalf("want sstables and a WAL: %v", entries)
	}
	targets = append(targets, newestWAL)
	rng := rand.New(rand.NewPCG(11, 0xf1f))
	for i := range 24 {
		name := targets[i%len(targets)]
		dir := filepath.Join(t.TempDir(), fmt.Sprint("flip", i))
		if err := os.CopyFS(dir, os.DirFS(src)); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		b, err := os.ReadFile(path)
		if err != nil || len(b) == 0 {
			t.Fatalf("read %s: %d bytes, %v", name, len(b), err)
		}
		n := len(b)
		if name == newestWAL {
			n -= 11
		}
		off := rng.IntN(n)
		if name == newestWAL && i%4 == 3 {
			off = n - 1 - rng.IntN(min(n, 256)) // the last record: no later chunk vouches for it
		}
		b[off] ^= byte(1 << rng.IntN(8))
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(dir, Options{}, pub); err == nil {
			t.Fatalf("Verify passed with byte %d of %s (%d bytes) flipped", off, name, len(b))
		} else {
			t.Logf("%s[%d]: %v", name, off, err)
		}
	}
}

// firstPosting returns the first posting record of at least n transfers.
func firstPosting(db pebble.Reader, n int) (uint64, postingRec, error) {
	var first uint64
	var rec postingRec
	err := scanPrefix(db, prefixTx, func(k string, v []byte) error {
		if first != 0 {
			return nil
		}
		seq, err := parseSeq(k)
		if err == nil {
			err = decodePosting(seq, v, &rec)
		}
		if err == nil && len(rec.txs) >= n {
			first = seq
		}
		return err
	})
	if err == nil && first == 0 {
		err = fmt.Errorf("no posting of %d transfers", n)
	}
	return first, rec, err
}

// splitPosting rewrites the posting record t/<first> as the one-transfer
// records of earlier versions.
func splitPosting(db *pebble.DB, first uint64, rec *postingRec) error {
	b := db.NewBatch()
	_ = b.Delete(txKey(first), nil)
	for i, e := range rec.txs {
		seq := first + uint64(i)
		tr := Transfer{From: e.from, To: e.to, Amount: e.amount, Kind: e.kind}
		_ = b.Set(txKey(seq), appendTx(nil, seq, rec.time, rec.key, e.leg, &tr), nil)
	}
	return b.Commit(pebble.Sync)
}

// TestOldTransferRecords rewrites every posting record of a closed store as
// the one-transfer records earlier versions wrote (under the version 1
// links they wrote: version 2 leaves name each posting's transfer count,
// which only posting records hold): the store still verifies, and lists
// the same transfers.
func TestOldTransferRecords(t *testing.T) {
	fs := vfs.NewMem()
	buildSignedLinks(t, fs, "db", 5, 1)
	_, pub := newKeys(1)
	rep, err := Verify("db", Options{FS: fs}, pub)
	if err != nil {
		t.Fatal(err)
	}
	list := func() map[string][]TxRecord {
		l := openLedger(t, fs, "db")
		defer l.Close()
		out := map[string][]TxRecord{}
		bal, _ := l.Balances()
		for id := range bal {
			txs, _, err := l.Transactions(id, "", MaxTxPageSize)
			if err != nil {
				t.Fatal(err)
			}
			out[id] = txs
		}
		return out
	}
	before := list()
	multi := 0
	rewrite(t, fs, "db", func(db *pebble.DB) error {
		recs := map[uint64]postingRec{}
		err := scanPrefix(db, prefixTx, func(k string, v []byte) error {
			seq, err := parseSeq(k)
			var rec postingRec
			if err == nil {
				err = decodePosting(seq, v, &rec)
			}
			if len(rec.txs) > 1 {
				multi++
			}
			recs[seq] = rec
			return err
		})
		for first, rec := range recs {
			if err == nil {
				err = splitPosting(db, first, &rec)
			}
		}
		return err
	})
	if multi == 0 {
		t.Fatal("no posting record of several transfers")
	}
	rep2, err := Verify("db", Options{FS: fs}, pub)
	if err != nil || rep2 != rep {
		t.Fatalf("Verify of old-format records = %+v, %v; want %+v", rep2, err, rep)
	}
	after := list()
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("old-format records list differently")
	}
	n := 0
	for _, txs := range after {
		n += len(txs)
	}
	if n == 0 {
		t.Fatal("no transfers listed")
	}
}
