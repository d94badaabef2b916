package ledger

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// TestConcurrentPosts runs 8 writers of 200 postings each (every one posted
// twice, to exercise idempotency under contention) while readers check that
// every Balances snapshot sums to zero.
func TestConcurrentPosts(t *testing.T) {
	const writers, perWriter = 8, 200
	l := openLedger(t, vfs.NewMem(), "db")
	owner, _ := mustCreate(t, l, 0)
	consumers := make([]AccountState, writers)
	for i := range consumers {
		consumers[i], _ = mustCreate(t, l, economy.StartingCreditUcr)
	}
	cost := economy.Cost(economy.DefaultPriceTable().Default, 1000, 500) // 2000 µcr
	split := economy.SplitCost(cost, economy.DefaultProviderBps)

	stop := make(chan struct{})
	var readers sync.WaitGroup
	var snapshots atomic.Int64
	for range 2 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				bal, _ := l.Balances()
				var sum int64
				for _, b := range bal {
					sum += b
				}
				if sum != 0 {
					t.Errorf("snapshot sums to %d", sum)
					return
				}
				if _, _, err := l.Transactions(owner.ID, "", 10); err != nil {
					t.Errorf("Transactions: %v", err)
					return
				}
				snapshots.Add(1)
				time.Sleep(200 * time.Microsecond)
			}
		})
	}

	var wg sync.WaitGroup
	var applied atomic.Int64
	for w := range writers {
		wg.Go(func() {
			c := consumers[w].ID
			for i := range perWriter {
				to := owner.ID
				if i%4 == 0 {
					to = fmt.Sprintf("node:w%d", w%3)
				}
				p := callPosting(fmt.Sprintf("w%d-req%d", w, i), c, to, split.Provider, split.Platform)
				for range 2 {
					ok, err := l.Post(p)
					if err != nil {
						t.Errorf("Post: %v", err)
						return
					}
					if ok {
						applied.Add(1)
					}
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	readers.Wait()
	checkInvariants(t, l)

	if got := applied.Load(); got != writers*perWriter {
		t.Fatalf("applied %d postings, want %d", got, writers*perWriter)
	}
	for _, c := range consumers {
		st := mustAccount(t, l, c.ID)
		if st.Calls != perWriter || st.Spent != perWriter*cost || st.Balance != economy.StartingCreditUcr-perWriter*cost {
			t.Fatalf("consumer %+v", st)
		}
	}
	var providers int64
	for id, b := range mustBalances(t, l) {
		if id == owner.ID || len(id) > 5 && id[:5] == "node:" {
			providers += b
		}
	}
	if providers != writers*perWriter*split.Provider {
		t.Fatalf("providers hold %d, want %d", providers, writers*perWriter*split.Provider)
	}
	if p := mustAccount(t, l, AccountPlatform).Balance; p != writers*perWriter*split.Platform {
		t.Fatalf("platform = %d, want %d", p, writers*perWriter*split.Platform)
	}
	t.Logf("%d balance snapshots checked during the run", snapshots.Load())
}

func mustBalances(t testing.TB, l *Ledger) map[string]int64 {
	t.Helper()
	b, err := l.Balances()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// BenchmarkPost measures sequential synced postings (one call: two transfers,
// three account records, one idempotency record) on the OS file system.
func BenchmarkPost(b *testing.B) {
	l, err := Open(filepath.Join(b.TempDir(), "db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	c, _, err := l.CreateAccount(1 << 50)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := l.Post(callPosting(fmt.Sprintf("req-%d", i), c.ID, "node:bench", 8, 2)); err != nil {
			b.Fatal(err)
		}
	}
}
