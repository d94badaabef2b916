package journal

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

func testReceipt(id string) *p2p.Receipt {
	claim := p2p.NodeClaim{RequestID: id, Model: "m", Node: "node", Gateway: "gw", PromptTokens: 3, CompletionTokens: 5}
	return &p2p.Receipt{
		RequestID: id, Model: "m", Consumer: "acct_1", Node: "node", Gateway: "gw",
		PromptTokens: 3, CompletionTokens: 5, Price: economy.Price{InputPer1M: 1, OutputPer1M: 2}, CostUcr: 1,
		TimeMs: 1_760_000_000_000, Claim: claim, NodeMAC: []byte{1, 2, 3}, Hold: "hold_1",
	}
}

func openTestJournal(t *testing.T, dir string, tweak func(*Config)) *Journal {
	t.Helper()
	cfg := DefaultConfig()
	if tweak != nil {
		tweak(&cfg)
	}
	j, err := OpenConfig(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func pendingIDs(t *testing.T, j *Journal) []string {
	t.Helper()
	rs, err := j.Pending()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range rs {
		ids = append(ids, r.RequestID)
	}
	slices.Sort(ids)
	return ids
}

func TestJournalReopen(t *testing.T) {
	dir := t.TempDir()
	j := openTestJournal(t, dir, nil)
	for i := range 5 {
		if err := j.Put(testReceipt(fmt.Sprintf("req_%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Done("req_0", "req_1"); err != nil {
		t.Fatal(err)
	}
	if err := j.Refused(testReceipt("req_2"), "bad MAC"); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := j.Put(testReceipt("late")); err != ErrClosed {
		t.Fatalf("Put after Close: %v", err)
	}
	j = openTestJournal(t, dir, nil)
	defer j.Close()
	if got := pendingIDs(t, j); !slices.Equal(got, []string{"req_3", "req_4"}) {
		t.Fatalf("pending after reopen: %v", got)
	}
	rs, _ := j.Pending()
	if r := rs[0]; r.Claim.CompletionTokens != 5 || string(r.NodeMAC) != "\x01\x02\x03" || r.Hold != "hold_1" {
		t.Fatalf("receipt read back as %+v", r)
	}
	for _, f := range []string{journalFile, refusedFile} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, fi, err)
		}
	}
	if lines := refusedLines(t, dir); len(lines) != 1 || lines[0].Receipt.RequestID != "req_2" || lines[0].Reason != "bad MAC" {
		t.Fatalf("refused.log: %+v", lines)
	}
}

func refusedLines(t *testing.T, dir string) []refusedRecord {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, refusedFile))
	if err != nil {
		t.Fatal(err)
	}
	var out []refusedRecord
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var r refusedRecord
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("refused.log line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// Put has written its record to the file when it returns: a second reader
// (the gateway restarted after its process died, here without Close) sees
// it, before any fsync was asked for.
func TestJournalPutIsWrittenBeforeItReturns(t *testing.T) {
	dir := t.TempDir()
	j := openTestJournal(t, dir, func(c *Config) { c.SyncInterval = time.Hour })
	defer j.Close()
	for i := range 3 {
		if err := j.Put(testReceipt(fmt.Sprintf("req_%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	other := openTestJournal(t, dir, nil)
	defer other.Close()
	if got := pendingIDs(t, other); len(got) != 3 {
		t.Fatalf("a process reading the journal after Put returned sees %v", got)
	}
}

// A record cut off by a crash mid-write is dropped at open; everything
// before it is kept and the journal goes on after it.
func TestJournalTornTail(t *testing.T) {
	dir := t.TempDir()
	j := openTestJournal(t, dir, nil)
	for i := range 3 {
		j.Put(testReceipt(fmt.Sprintf("req_%d", i)))
	}
	j.Close()
	path := filepath.Join(dir, journalFile)
	whole, _ := os.ReadFile(path)
	rec := appendRecord(nil, recPut, mustEncode(t, testReceipt("req_torn")))
	for _, tail := range [][]byte{rec[:len(rec)/2], append(rec[:len(rec)-1:len(rec)-1], rec[len(rec)-1]^0xff), make([]byte, 300)} {
		os.WriteFile(path, append(slices.Clone(whole), tail...), 0o600)
		j = openTestJournal(t, dir, nil)
		if got := pendingIDs(t, j); !slices.Equal(got, []string{"req_0", "req_1", "req_2"}) {
			t.Fatalf("after a torn tail of %d bytes: %v", len(tail), got)
		}
		if err := j.Put(testReceipt("req_after")); err != nil {
			t.Fatal(err)
		}
		j.Close()
		j = openTestJournal(t, dir, nil)
		if got := pendingIDs(t, j); !slices.Equal(got, []string{"req_0", "req_1", "req_2", "req_after"}) {
			t.Fatalf("a record written after the torn tail was lost: %v", got)
		}
		j.Close()
	}
}

func mustEncode(t *testing.T, r *p2p.Receipt) []byte {
	t.Helper()
	b, err := encodeReceipt(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// With SyncEach, Put returns once its record is fsync'd; by default within
// SyncInterval.
func TestJournalSync(t *testing.T) {
	for _, each := range []bool{true, false} {
		j := openTestJournal(t, t.TempDir(), func(c *Config) { c.SyncEach = each })
		var wg sync.WaitGroup
		for i := range 50 {
			wg.Go(func() {
				if err := j.Put(testReceipt(fmt.Sprintf("req_%d", i))); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		j.mu.Lock()
		written := j.written
		j.mu.Unlock()
		if each {
			j.syncMu.Lock()
			if j.synced != written {
				t.Errorf("SyncEach: %d records written, %d synced when every Put returned", written, j.synced)
			}
			j.syncMu.Unlock()
		} else if err := j.waitSynced(written); err != nil {
			t.Error(err)
		}
		j.Close()
	}
}

// Once the file is large and mostly settled it is rewritten with only the
// pending receipts; refused ones stay in refused.log.
func TestJournalCompaction(t *testing.T) {
	dir := t.TempDir()
	j := openTestJournal(t, dir, func(c *Config) { c.CompactAt = 64 << 10 })
	for i := range 2000 {
		id := fmt.Sprintf("req_%d", i)
		if err := j.Put(testReceipt(id)); err != nil {
			t.Fatal(err)
		}
		switch {
		case i%100 == 0: // every hundredth stays pending
		case i%10 == 0:
			if err := j.Refused(testReceipt(id), "bad"); err != nil {
				t.Fatal(err)
			}
		default:
			if err := j.Done(id); err != nil {
				t.Fatal(err)
			}
		}
	}
	j.Close()
	fi, _ := os.Stat(filepath.Join(dir, journalFile))
	if fi.Size() > 64<<10 {
		t.Fatalf("journal is %d bytes after compactions", fi.Size())
	}
	j = openTestJournal(t, dir, nil)
	defer j.Close()
	if got := pendingIDs(t, j); len(got) != 20 {
		t.Fatalf("after compaction: %d pending (%v)", len(got), got)
	}
	if n := len(refusedLines(t, dir)); n != 180 {
		t.Fatalf("refused.log holds %d receipts, want 180", n)
	}
}

func BenchmarkJournalPut(b *testing.B) {
	j, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	r := testReceipt("req")
	i := 0
	for b.Loop() {
		r.RequestID = fmt.Sprint("req_", i)
		i++
		if err := j.Put(r); err != nil {
			b.Fatal(err)
		}
	}
}

// refused.log past RefusedMax moves to refused.log.1, replacing the one
// before, so refused receipts never fill the disk; the newest stay.
func TestJournalRefusedLogRotates(t *testing.T) {
	dir := t.TempDir()
	const max = 8 << 10
	j := openTestJournal(t, dir, func(c *Config) { c.RefusedMax = max })
	defer j.Close()
	for i := range 200 {
		id := fmt.Sprintf("req_%d", i)
		if err := j.Put(testReceipt(id)); err != nil {
			t.Fatal(err)
		}
		if err := j.Refused(testReceipt(id), "bad"); err != nil {
			t.Fatal(err)
		}
	}
	cur, err := os.Stat(filepath.Join(dir, refusedFile))
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.Stat(filepath.Join(dir, refusedFile+".1"))
	if err != nil {
		t.Fatalf("refused.log was never moved aside: %v", err)
	}
	if cur.Size() > max || old.Size() > max || old.Mode().Perm() != 0o600 {
		t.Fatalf("refused.log %d bytes, refused.log.1 %d bytes (%v), want each <= %d", cur.Size(), old.Size(), old.Mode(), max)
	}
	lines := refusedLines(t, dir)
	if last := lines[len(lines)-1]; last.Receipt.RequestID != "req_199" {
		t.Fatalf("the newest refusal is not in refused.log: %+v", last)
	}
}
