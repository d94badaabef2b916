package ledger

import (
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Stats follows what is committed: accounts, open holds and what they
// reserve, transfers, hold events and chain links; it survives a reopen.
func TestStats(t *testing.T) {
	fs := vfs.NewMem()
	l := openLedger(t, fs, "db")
	base := l.Stats()
	if base.Accounts != 3 || base.OpenHolds != 0 || base.Transfers != 0 || base.ChainLinks != 0 {
		t.Fatalf("a new ledger: %+v", base) // mint, platform, bounty_pool
	}
	c, _ := mustCreate(t, l, 1000) // one grant transfer
	mustHold(t, l, "h1", c.ID, 300, fixedNow().Add(time.Hour))
	mustHold(t, l, "h2", c.ID, 200, fixedNow().Add(time.Hour))
	if _, err := l.VoidHold("h2"); err != nil {
		t.Fatal(err)
	}
	mustPost(t, l, callPosting("call/r1", c.ID, "node:p", 80, 20))
	s := l.Stats()
	want := Stats{Accounts: 5, OpenHolds: 1, HeldUcr: 300, Transfers: 3, HoldEvents: 3, ChainLinks: 5}
	if s != want {
		t.Fatalf("Stats = %+v, want %+v", s, want)
	}
	l.Close()
	if again := openLedger(t, fs, "db").Stats(); again != s {
		t.Fatalf("after reopening: %+v, want %+v", again, s)
	}
}
