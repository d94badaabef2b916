package ledger

import (
	"testing"
)

// BenchmarkPostBatchGrown is BenchmarkPostBatch on a store that already
// holds grownPostings postings (loaded, untimed, in setup), so that the
// idempotency lookups and memtable/L0 state are those of a store in use
// rather than a fresh one.
func BenchmarkPostBatchGrown(b *testing.B) {
	const size = 1000
	const grownPostings = 200_000
	l, consumers, _ := benchLedger(b)
	for i, batch := range benchPostings(consumers, grownPostings/size, size, -2) {
		res, err := l.PostBatch(batch)
		if err != nil {
			b.Fatal(err)
		}
		if !res[0].Applied {
			b.Fatalf("preload batch %d: %v", i, res[0].Err)
		}
	}
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
	if testing.Verbose() {
		b.Logf("pebble metrics:\n%s", l.db.Metrics())
	}
}
