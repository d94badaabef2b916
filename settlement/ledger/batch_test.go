package ledger

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

func TestPostBatch(t *testing.T) {
	fs := vfs.NewMem()
	l := openLedger(t, fs, "db")
	c, _ := mustCreate(t, l, 1000)
	poor, _ := mustCreate(t, l, 10)
	mustPost(t, l, callPosting("old", c.ID, "node:p", 8, 2))
	conflictOld := callPosting("old", c.ID, "node:p", 8, 2)
	conflictOld.Payload = []byte("other")
	dupOther := callPosting("b1", c.ID, "node:p", 1, 1)
	dupOther.Payload = []byte("other")
	head := l.Head()

	batch := []Posting{
		callPosting("b1", c.ID, "node:p", 80, 20),    // applied
		callPosting("b2", poor.ID, "node:p", 80, 20), // insufficient funds
		callPosting("old", c.ID, "node:p", 8, 2),     // replay of a stored posting
		conflictOld,                                  // conflict with a stored posting
		callPosting("b1", c.ID, "node:p", 80, 20),    // replay within the batch
		dupOther,                  // conflict within the batch
		{Key: "", Transfers: nil}, // invalid
		{Key: "fund", Transfers: []Transfer{{From: c.ID, To: poor.ID, Amount: 100, Kind: "topup"}}},
		callPosting("b2", poor.ID, "node:p", 80, 20), // rejected above: applies now, with money from "fund"
	}
	res, err := l.PostBatch(batch)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		applied bool
		err     error
	}{{true, nil}, {false, ErrInsufficientFunds}, {false, nil}, {false, ErrConflict}, {false, nil},
		{false, ErrConflict}, {false, ErrInvalid}, {true, nil}, {true, nil}}
	for i, w := range want {
		if res[i].Applied != w.applied || !errors.Is(res[i].Err, w.err) || (w.err == nil) != (res[i].Err == nil) {
			t.Errorf("posting %d (%s): %+v, want %v %v", i, batch[i].Key, res[i], w.applied, w.err)
		}
	}
	checkInvariants(t, l)
	if h := l.Head(); h.Seq != head.Seq+1 || h.LastTx-h.FirstTx+1 != 5 {
		t.Fatalf("batch made links %d..%d covering %d..%d", head.Seq, h.Seq, h.FirstTx, h.LastTx)
	}
	if st := mustAccount(t, l, c.ID); st.Balance != 1000-10-100-100 || st.Calls != 2 {
		t.Fatalf("consumer = %+v", st)
	}
	if st := mustAccount(t, l, poor.ID); st.Balance != 10 || st.Calls != 1 {
		t.Fatalf("poor = %+v", st)
	}
	// An all-replay batch writes nothing.
	res, err = l.PostBatch(batch[:1])
	if err != nil || res[0].Applied || res[0].Err != nil || l.Head().Seq != head.Seq+1 {
		t.Fatalf("replay batch = %+v, %v", res, err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.PostBatch(batch); !errors.Is(err, ErrClosed) {
		t.Fatalf("PostBatch after Close err = %v", err)
	}
}

// benchPostings returns batches of postings of 3 transfers each, among
// accounts consumers.
func benchPostings(consumers []string, batches, size int, round int) [][]Posting {
	out := make([][]Posting, batches)
	for b := range out {
		out[b] = make([]Posting, size)
		for i := range out[b] {
			n := (b*size + i)
			c := consumers[n%len(consumers)]
			key := fmt.Sprintf("call/%d-%d-%d", round, b, i)
			out[b][i] = Posting{Key: key, Payload: []byte(key), Consumer: c, Transfers: []Transfer{
				{From: c, To: consumers[(n*7+1)%len(consumers)], Amount: 80, Kind: KindCall, Leg: "provider"},
				{From: c, To: AccountPlatform, Amount: 20, Kind: KindCall, Leg: "platform"},
				{From: AccountPlatform, To: consumers[(n*7+1)%len(consumers)], Amount: 5, Kind: KindBounty, Leg: "bounty"},
			}}
		}
	}
	return out
}

func benchLedger(b *testing.B) (*Ledger, []string, string) {
	dir := filepath.Join(b.TempDir(), "db")
	l, err := Open(dir, Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	consumers := make([]string, 1000)
	for i := range consumers {
		st, _, err := l.CreateAccount(1 << 40)
		if err != nil {
			b.Fatal(err)
		}
		consumers[i] = st.ID
	}
	return l, consumers, dir
}

// batchBytes is the size of the pebble batch PostBatch writes for one batch
// of 1000 fresh postings, measured once.
var batchBytes int

// BenchmarkPostBatch measures PostBatch with batches of 1000 postings of 3
// transfers each over 1000 accounts, on the OS file system (fsync per batch).
func BenchmarkPostBatch(b *testing.B) {
	const size = 1000
	l, consumers, _ := benchLedger(b)
	// Warm up and measure the bytes one batch writes.
	warm := benchPostings(consumers, 1, size, -1)[0]
	before := l.db.Metrics().WAL.BytesIn
	if _, err := l.PostBatch(warm); err != nil {
		b.Fatal(err)
	}
	batchBytes = int(l.db.Metrics().WAL.BytesIn - before)
	batches := benchPostings(consumers, b.N, size, 0)
	b.ResetTimer()
	for i := range b.N {
		res, err := l.PostBatch(batches[i])
		if err != nil {
			b.Fatal(err)
		}
		if !res[0].Applied {
			b.Fatal(res[0].Err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "postings/s")
	b.ReportMetric(float64(batchBytes), "bytes/batch")
}

// BenchmarkRawPebbleSyncedBatch is the floor under BenchmarkPostBatch: one
// synced pebble batch per iteration holding as many bytes as PostBatch
// writes for 1000 postings (in 10 records per posting, more than PostBatch's
// about 6), no ledger logic.
func BenchmarkRawPebbleSyncedBatch(b *testing.B) {
	const size = 1000
	if batchBytes == 0 {
		batchBytes = 1000 * 750 // if run alone; BenchmarkPostBatch measures it
	}
	db, err := pebble.Open(filepath.Join(b.TempDir(), "raw"), &pebble.Options{Logger: pebbleLogger{slog.New(slog.DiscardHandler)}, MemTableSize: 64 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	const records = 10 * size
	value := make([]byte, max(0, batchBytes/records-24))
	key := make([]byte, 0, 24)
	b.ResetTimer()
	for i := range b.N {
		batch := db.NewBatch()
		for r := range records {
			key = appendSeqKey(key[:0], "r/", uint64(i*records+r))
			if err := batch.Set(key, value, nil); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Commit(pebble.Sync); err != nil {
			b.Fatal(err)
		}
		batch.Close()
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "postings/s")
	b.ReportMetric(float64(batchBytes), "bytes/batch")
}
