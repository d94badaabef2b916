package ledger

import (
	"errors"
	"testing"
	"time"

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
// negative, and that the cache matches what the store holds on disk.
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
	}
	if sum != 0 {
		t.Fatalf("balances sum to %d, want 0: %v", sum, bal)
	}
	if bal[AccountMint] > 0 {
		t.Fatalf("mint has positive balance %d", bal[AccountMint])
	}
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
