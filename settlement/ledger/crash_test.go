package ledger

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestCrashRecovery simulates power loss at a random moment while postings
// are being applied from another goroutine. The crashed copy of the disk must
// open with the invariants intact and hold every posting whose Post had
// returned; re-posting everything must then apply each posting exactly once.
func TestCrashRecovery(t *testing.T) {
	const n = 60
	const grant = 1_000_000
	for seed := range uint64(8) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0x7e57))
			fs := vfs.NewCrashableMem()
			l, err := Open("db", Options{FS: fs, Now: fixedNow})
			if err != nil {
				t.Fatal(err)
			}
			consumer, _ := mustCreate(t, l, grant)
			owner, _ := mustCreate(t, l, 0)
			if err := l.LinkNode("peer", owner.ID); err != nil {
				t.Fatal(err)
			}
			postings := make([]Posting, n)
			for i := range postings {
				p := callPosting(fmt.Sprintf("req-%03d", i), consumer.ID, owner.ID, int64(8*(i+1)), int64(2*(i+1)))
				if i%5 == 0 { // some providers are unlinked node accounts
					p.Transfers[0].To = fmt.Sprintf("node:n%d", i%3)
				}
				postings[i] = p
			}

			// Post from a goroutine; crash once `crashAfter` posts have returned,
			// while later posts are in flight.
			crashAfter := rng.IntN(n + 1)
			acked := make(chan int, n)
			done := make(chan error, 1)
			go func() {
				for i, p := range postings {
					if _, err := l.Post(p); err != nil {
						done <- fmt.Errorf("Post(%d): %w", i, err)
						return
					}
					acked <- i
				}
				done <- nil
			}()
			for range crashAfter {
				<-acked
			}
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rng})
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}

			r := openLedger(t, crashed, "db")
			checkInvariants(t, r)
			if _, err := r.AccountByKey("trk_x"); !errors.Is(err, ErrUnknownKey) {
				t.Fatal(err)
			}
			if acct, ok := r.NodeAccount("peer"); !ok || acct != owner.ID {
				t.Fatalf("node link lost: %q %v", acct, ok)
			}
			survived := mustAccount(t, r, consumer.ID).Calls
			if survived < int64(crashAfter) {
				t.Fatalf("%d postings survived, %d were acknowledged", survived, crashAfter)
			}
			for i, p := range postings {
				applied := mustPost(t, r, p)
				if i < crashAfter && applied {
					t.Fatalf("acknowledged posting %d was lost in the crash", i)
				}
				if int64(i) < survived && applied || int64(i) >= survived && !applied {
					t.Fatalf("posting %d: applied=%v with %d survivors (postings must survive in order)", i, applied, survived)
				}
			}

			var spent int64
			for i := range n {
				spent += int64(10 * (i + 1))
			}
			c := mustAccount(t, r, consumer.ID)
			if c.Calls != n || c.Spent != spent || c.Balance != grant-spent {
				t.Fatalf("consumer after replay = %+v, want calls %d spent %d", c, n, spent)
			}
			if p := mustAccount(t, r, AccountPlatform).Balance; p != spent/5 {
				t.Fatalf("platform = %d, want %d", p, spent/5)
			}
			txs, _, err := r.Transactions(consumer.ID, "", MaxTxPageSize)
			if err != nil || len(txs) != 1+2*n {
				t.Fatalf("consumer has %d transfers (%v), want %d", len(txs), err, 1+2*n)
			}
		})
	}
}
