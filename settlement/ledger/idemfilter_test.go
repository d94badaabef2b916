package ledger

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestIdemFilter checks that the filter never forgets a key as it grows
// through several layers, and that its false-positive rate stays small.
func TestIdemFilter(t *testing.T) {
	f := newIdemFilter(0)
	const n = 5 * filterMinCap
	for i := range n {
		f.add(fmt.Sprintf("key-%d", i))
	}
	if len(f.layers) < 3 {
		t.Fatalf("%d keys in %d layers; want growth", n, len(f.layers))
	}
	for i := range n {
		if k := fmt.Sprintf("key-%d", i); !f.mayContain(k) {
			t.Fatalf("filter lost %q", k)
		}
	}
	fp := 0
	const probes = 200_000
	for i := range probes {
		if f.mayContain(fmt.Sprintf("other-%d", i)) {
			fp++
		}
	}
	if rate := float64(fp) / probes; rate > 0.02 {
		t.Fatalf("false-positive rate %.4f over %d layers", rate, len(f.layers))
	} else {
		t.Logf("false-positive rate %.4f over %d layers", rate, len(f.layers))
	}
}

// TestIdemFilterLoad checks that the filter Open builds by scanning i/
// (hashing []byte keys) agrees with the one PostBatch feeds (hashing
// strings).
func TestIdemFilterLoad(t *testing.T) {
	fs := vfs.NewMem()
	db, err := pebble.Open("db", &pebble.Options{FS: fs, Logger: pebbleLogger{slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	b := db.NewBatch()
	for i := range 3 * filterMinCap {
		if err := b.Set(idemKey(fmt.Sprintf("k%d", i)), idemRecord{}.encode(), nil); err != nil {
			t.Fatal(err)
		}
	}
	// Neighbouring prefixes must not be read as idempotency keys.
	_ = b.Set([]byte("h/x"), nil, nil)
	_ = b.Set([]byte("k/x"), nil, nil)
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	f, err := loadIdemFilter(db)
	if err != nil {
		t.Fatal(err)
	}
	if f.n != 3*filterMinCap || len(f.layers) != 1 {
		t.Fatalf("loaded %d keys into %d layers", f.n, len(f.layers))
	}
	for i := range 3 * filterMinCap {
		if !f.mayContain(fmt.Sprintf("k%d", i)) {
			t.Fatalf("loaded filter lost k%d", i)
		}
	}
}

// TestReplayAfterReopenAndCrash posts batches while flushing and
// compacting (so idempotency records live in memtables, L0 and lower
// levels), then checks that every applied key is recognised as a replay —
// and a different payload under it as a conflict — after the filter is
// rebuilt by a reopen, and after a crash that loses unsynced data: each
// posting applies exactly once.
func TestReplayAfterReopenAndCrash(t *testing.T) {
	const batches, size = 12, 50
	fs := vfs.NewCrashableMem()
	l, err := Open("db", Options{FS: fs, Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	var consumers []string
	for range 4 { // an even count: benchPostings never pays an account to itself
		st, _ := mustCreate(t, l, 1<<30)
		consumers = append(consumers, st.ID)
	}
	all := benchPostings(consumers, batches, size, 7)
	post := func(l *Ledger, i int) {
		t.Helper()
		res, err := l.PostBatch(all[i])
		if err != nil {
			t.Fatal(err)
		}
		for j, r := range res {
			if !r.Applied || r.Err != nil {
				t.Fatalf("batch %d posting %d: %+v", i, j, r)
			}
		}
	}
	// Batches 0..5: applied, some flushed and compacted.
	for i := range 6 {
		post(l, i)
		switch i {
		case 1, 3:
			if err := l.db.Flush(); err != nil {
				t.Fatal(err)
			}
		case 4:
			if err := l.db.Compact(t.Context(), []byte("a"), []byte("z"), true); err != nil {
				t.Fatal(err)
			}
		}
	}
	checkReplays(t, l, all[:6])
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopen: the filter is rebuilt from the store.
	l, err = Open("db", Options{FS: fs, Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	checkReplays(t, l, all[:6])
	checkInvariants(t, l)

	// Batches 6..11 from a goroutine; crash once some have returned.
	crashAfter := 3
	acked := make(chan int, batches)
	done := make(chan error, 1)
	go func() {
		for i := 6; i < batches; i++ {
			if _, err := l.PostBatch(all[i]); err != nil {
				done <- err
				return
			}
			acked <- i
		}
		done <- nil
	}()
	for range crashAfter {
		<-acked
	}
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rand.New(rand.NewPCG(1, 2))})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkReplays(t, l, all)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	r := openLedger(t, crashed, "db")
	checkInvariants(t, r)
	// Acknowledged batches (0..5 and the first crashAfter of the rest)
	// survived and are replays; the others survived whole or not at all.
	survived := 6 + crashAfter
	for survived < batches {
		if _, found, err := lookupIdem(r.db, idemKey(all[survived][0].Key)); err != nil || !found {
			break
		}
		survived++
	}
	t.Logf("%d of %d batches survived the crash", survived, batches)
	checkReplays(t, r, all[:survived])
	calls := map[string]int64{}
	for _, id := range consumers {
		calls[id] = mustAccount(t, r, id).Calls
	}
	// Post everything twice more: the lost batches apply once, nothing else.
	for round := range 2 {
		for i, batch := range all {
			res, err := r.PostBatch(batch)
			if err != nil {
				t.Fatal(err)
			}
			for j, br := range res {
				if want := round == 0 && i >= survived; br.Applied != want || br.Err != nil {
					t.Fatalf("round %d batch %d posting %d: %+v, want applied=%v", round, i, j, br, want)
				}
				if br.Applied {
					calls[batch[j].Consumer]++
				}
			}
		}
	}
	for _, id := range consumers {
		if got := mustAccount(t, r, id).Calls; got != calls[id] {
			t.Fatalf("consumer %s made %d calls, want %d", id, got, calls[id])
		}
	}
	var total int64
	for _, c := range calls {
		total += c
	}
	if total != batches*size {
		t.Fatalf("%d postings applied, want %d", total, batches*size)
	}
	checkReplays(t, r, all)
	checkInvariants(t, r)
}

// checkReplays asserts that every posting of batches is a replay in l, and
// that the same keys with another payload are conflicts. It changes nothing.
func checkReplays(t *testing.T, l *Ledger, batches [][]Posting) {
	t.Helper()
	head := l.Head()
	for i, batch := range batches {
		res, err := l.PostBatch(batch)
		if err != nil {
			t.Fatal(err)
		}
		conflicts := slices.Clone(batch)
		for j := range conflicts {
			conflicts[j].Payload = []byte("changed")
		}
		cres, err := l.PostBatch(conflicts)
		if err != nil {
			t.Fatal(err)
		}
		for j := range batch {
			if res[j].Applied || res[j].Err != nil {
				t.Fatalf("batch %d posting %q: replay gave %+v", i, batch[j].Key, res[j])
			}
			if cres[j].Applied || !errors.Is(cres[j].Err, ErrConflict) {
				t.Fatalf("batch %d posting %q: changed payload gave %+v", i, batch[j].Key, cres[j])
			}
		}
	}
	if h := l.Head(); h.Seq != head.Seq {
		t.Fatalf("replays wrote chain links %d..%d", head.Seq, h.Seq)
	}
}

// TestTransactionsIndexRecords pages through an account's transfers when
// index records list many transfers (one record per account per batch), a
// page boundary falls inside a record, and records in the one-transfer form
// of earlier versions are mixed in.
func TestTransactionsIndexRecords(t *testing.T) {
	l := openLedger(t, vfs.NewMem(), "db")
	c, _ := mustCreate(t, l, 1_000_000)
	o, _ := mustCreate(t, l, 0)
	var batch []Posting
	for i := range 7 {
		batch = append(batch, callPosting(fmt.Sprintf("b%d", i), c.ID, o.ID, int64(i+1), 1))
	}
	if _, err := l.PostBatch(batch); err != nil {
		t.Fatal(err)
	}
	mustPost(t, l, callPosting("single", c.ID, o.ID, 100, 1))
	if _, err := l.PostBatch(batch[:3]); err != nil { // replays only
		t.Fatal(err)
	}
	want := pageAll(t, l, c.ID, 1000)
	if len(want) != 1+2*8 {
		t.Fatalf("%d transfers, want %d", len(want), 1+2*8)
	}
	for _, limit := range []int{1, 2, 3, 5, 16, 17} {
		if got := pageAll(t, l, c.ID, limit); !slices.Equal(got, want) {
			t.Fatalf("limit %d: %v, want %v", limit, got, want)
		}
	}
	if got := pageAll(t, l, AccountPlatform, 4); len(got) != 8 {
		t.Fatalf("platform has %d transfers, want 8", len(got))
	}

	// Rewrite c's index in the old form, one empty record per transfer,
	// with a new-form record kept for the first batch's first half.
	var keep []byte
	err := scanKeys(l.db, indexPrefix(c.ID), func(k []byte) {
		if keep == nil {
			keep = append([]byte(indexPrefix(c.ID)), k...)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	b := l.db.NewBatch()
	if err := b.DeleteRange([]byte(indexPrefix(c.ID)), prefixEnd(indexPrefix(c.ID)), nil); err != nil {
		t.Fatal(err)
	}
	for _, seq := range want {
		_ = b.Set(indexKey(c.ID, seq), nil, nil)
	}
	// The grant's record (keep) becomes a two-transfer record: the grant
	// and the first call's first transfer.
	first := want[len(want)-1]
	second := want[len(want)-2]
	_ = b.Delete(indexKey(c.ID, second), nil)
	_ = b.Set(keep, []byte{byte(second - first)}, nil)
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	for _, limit := range []int{1, 2, 3, 17} {
		if got := pageAll(t, l, c.ID, limit); !slices.Equal(got, want) {
			t.Fatalf("old-form index, limit %d: %v, want %v", limit, got, want)
		}
	}
}

// pageAll lists account's transfer sequence numbers, newest first, limit
// per page, checking the order.
func pageAll(t *testing.T, l *Ledger, account string, limit int) []uint64 {
	t.Helper()
	var out []uint64
	cursor := ""
	for {
		txs, next, err := l.Transactions(account, cursor, limit)
		if err != nil {
			t.Fatal(err)
		}
		if len(txs) > limit || len(txs) == 0 && next != "" {
			t.Fatalf("page of %d records (limit %d), next %q", len(txs), limit, next)
		}
		for _, r := range txs {
			if r.From != account && r.To != account {
				t.Fatalf("record %+v does not touch %s", r, account)
			}
			if len(out) > 0 && r.Seq >= out[len(out)-1] {
				t.Fatalf("seq %d after %d", r.Seq, out[len(out)-1])
			}
			out = append(out, r.Seq)
		}
		if next == "" {
			return out
		}
		cursor = next
	}
}
