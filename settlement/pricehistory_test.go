package settlement

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// A restart with new prices does not void the bills gateways still carry:
// calls made while the old table was served are priced by it, for PriceGrace.
func TestPriceHistory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "price-history.json")
	t0 := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	old := economy.DefaultPriceTable()
	neu := economy.PriceTable{Default: economy.Price{InputPer1M: 3, OutputPer1M: 4}}
	oldP, newP := old.For("m"), neu.For("m")

	h, err := loadPriceHistory(path, old, t0)
	if err != nil {
		t.Fatal(err)
	}
	if !h.priced("m", oldP, t0) || h.priced("m", newP, t0) {
		t.Fatal("first table")
	}
	// Restarted an hour later with the same table: nothing changes.
	if h, err = loadPriceHistory(path, old, t0.Add(time.Hour)); err != nil || len(h.eras) != 1 {
		t.Fatalf("same table again: %+v %v", h.eras, err)
	}
	// Restarted with new prices at t1.
	t1 := t0.Add(2 * time.Hour)
	if h, err = loadPriceHistory(path, neu, t1); err != nil {
		t.Fatal(err)
	}
	switch {
	case !h.priced("m", newP, t1.Add(time.Minute)):
		t.Fatal("the new table prices calls made now")
	case !h.priced("m", oldP, t1.Add(-time.Minute)):
		t.Fatal("a call made under the old table is priced by it")
	case h.priced("m", oldP, t1.Add(time.Minute)):
		t.Fatal("the old table priced a call made after it was retired")
	case h.priced("m", economy.Price{InputPer1M: 1, OutputPer1M: 1}, t1):
		t.Fatal("a price no table had was accepted")
	}
	// Past the grace, the old table is forgotten.
	if h, err = loadPriceHistory(path, neu, t1.Add(PriceGrace+time.Hour)); err != nil || len(h.eras) != 1 || h.priced("m", oldP, t1.Add(-time.Minute)) {
		t.Fatalf("after the grace: %+v %v", h.eras, err)
	}
}
