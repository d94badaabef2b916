package ledger

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// fixedNow is a deterministic clock for record stamps.
func fixedNow() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }

// openLedger opens a ledger in dir on fs and closes it at test end unless the
// test closed it already.
func openLedger(t testing.TB, fs vfs.FS, dir string) *Ledger {
	t.Helper()
	l, err := Open(dir, Options{FS: fs, Now: fixedNow})
	if err != nil {
		t.Fatalf("Open(%q): %v", dir, err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return l
}

// checkInvariants asserts that balances sum to zero, that only mint is
// negative, that every account's Held is at most its balance and equals the
// sum of its open holds' Remaining, and — when no write is in flight — that
// the cache matches the store on disk and the whole chain verifies.
func checkInvariants(t testing.TB, l *Ledger) {
	t.Helper()
	bal, err := l.Balances()
	if err != nil {
		t.Fatalf("Balances: %v", err)
	}
	var sum int64
	for id, b := range bal {
		if b < 0 && id != AccountMint {
			t.Fatalf("account %q has negative balance %d", id, b)
		}
		sum += b
		st := mustAccount(t, l, id)
		var held int64
		for _, h := range l.Holds(id) {
			if h.Closed || h.Account != id || h.Remaining < 0 || h.Remaining > h.Amount {
				t.Fatalf("Holds(%q) lists %+v", id, h)
			}
			held += h.Remaining
		}
		if st.Held != held || st.Held < 0 || st.Held > 0 && st.Held > st.Balance || st.Available() != st.Balance-st.Held {
			t.Fatalf("account %q: held %d of balance %d, its open holds %d", id, st.Held, st.Balance, held)
		}
	}
	if sum != 0 {
		t.Fatalf("balances sum to %d, want 0: %v", sum, bal)
	}
	if bal[AccountMint] > 0 {
		t.Fatalf("mint has positive balance %d", bal[AccountMint])
	}
	checkDisk(t, l)
}

// checkDisk compares the cache with the account records on disk and
// verifies the chain of the live store. It skips a closed ledger.
func checkDisk(t testing.TB, l *Ledger) {
	t.Helper()
	l.wmu.Lock()
	defer l.wmu.Unlock()
	<-l.tail.done // no write in flight
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return
	}
	n := 0
	err := scanPrefix(l.db, prefixAccount, func(k string, v []byte) error {
		st, err := decodeAccount(v)
		if err != nil {
			return err
		}
		if got := l.pub.accounts[k]; got != st {
			return fmt.Errorf("account %q: cache %+v, disk %+v", k, got, st)
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != len(l.pub.accounts) {
		t.Fatalf("%d accounts on disk, %d cached", n, len(l.pub.accounts))
	}
	rep, err := verifyDB(l.db, nil)
	if err != nil {
		t.Fatalf("verify live store: %v", err)
	}
	if rep.Head != l.pub.head.Hash || rep.Transfers != int(l.pub.nextSeq-1) {
		t.Fatalf("verify report %+v, head %d %x, next seq %d", rep, l.pub.head.Seq, l.pub.head.Hash[:4], l.pub.nextSeq)
	}
}

// edSigner and edVerifier adapt ed25519 keys to Signer and Verifier, as
// libp2p's crypto.PrivKey and crypto.PubKey do.
type edSigner struct{ k ed25519.PrivateKey }

func (s edSigner) Sign(data []byte) ([]byte, error) { return ed25519.Sign(s.k, data), nil }

type edVerifier struct{ k ed25519.PublicKey }

func (v edVerifier) Verify(data, sig []byte) (bool, error) {
	return ed25519.Verify(v.k, data, sig), nil
}

// newKeys returns a deterministic ed25519 key pair.
func newKeys(seed byte) (edSigner, edVerifier) {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	return edSigner{priv}, edVerifier{priv.Public().(ed25519.PublicKey)}
}

func mustCreate(t testing.TB, l *Ledger, grant int64) (AccountState, string) {
	t.Helper()
	st, key, err := l.CreateAccount(grant)
	if err != nil {
		t.Fatalf("CreateAccount(%d): %v", grant, err)
	}
	checkInvariants(t, l)
	return st, key
}

func mustAccount(t testing.TB, l *Ledger, id string) AccountState {
	t.Helper()
	st, err := l.Account(id)
	if err != nil {
		t.Fatalf("Account(%q): %v", id, err)
	}
	return st
}

func mustPost(t testing.TB, l *Ledger, p Posting) bool {
	t.Helper()
	applied, err := l.Post(p)
	if err != nil {
		t.Fatalf("Post(%q): %v", p.Key, err)
	}
	checkInvariants(t, l)
	return applied
}

// callPosting is a paid call: consumer pays cost, split 80/20 between
// provider and platform.
func callPosting(key, consumer, provider string, provShare, platShare int64) Posting {
	return Posting{
		Key:      key,
		Payload:  []byte(key + "|" + consumer + "|" + provider),
		Consumer: consumer,
		Transfers: []Transfer{
			{From: consumer, To: provider, Amount: provShare, Kind: KindCall},
			{From: consumer, To: AccountPlatform, Amount: platShare, Kind: KindCall},
		},
	}
}

// appendTx encodes a one-transfer record (t/<seq>) in the format earlier
// versions wrote (recordV1), which decodePosting still reads.
func appendTx(b []byte, seq uint64, now int64, key, leg string, t *Transfer) []byte {
	b = append(b, recordV1)
	b = binary.AppendUvarint(b, seq)
	b = binary.AppendVarint(b, now)
	b = appendStr(b, key)
	b = appendStr(b, leg)
	b = appendStr(b, t.From)
	b = appendStr(b, t.To)
	b = binary.AppendVarint(b, t.Amount)
	return appendStr(b, t.Kind)
}

// postingAt returns the key seq and the decoded record of the t/ record
// holding transfer seq.
func postingAt(db pebble.Reader, seq uint64) (uint64, postingRec, error) {
	var rec postingRec
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixTx), UpperBound: prefixEnd(prefixTx)})
	if err != nil {
		return 0, rec, err
	}
	defer it.Close()
	if !it.SeekLT(txKey(seq + 1)) {
		return 0, rec, fmt.Errorf("no record holds transfer %d", seq)
	}
	first, err := parseSeq(string(it.Key()[len(prefixTx):]))
	if err == nil {
		err = decodePosting(first, it.Value(), &rec)
	}
	if err == nil && !rec.covers(seq) {
		err = fmt.Errorf("record %d does not hold transfer %d", first, seq)
	}
	return first, rec, err
}

// encodePosting re-encodes a decoded posting record.
func encodePosting(rec *postingRec) []byte {
	b, _ := appendPosting(nil, rec.time, rec.key, rec.txs, nil)
	return b
}
