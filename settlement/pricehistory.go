package settlement

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"time"

	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// PriceGrace is how long a price table the settlement peer no longer
// serves still prices receipts for calls made while it was served: a
// restart with new prices must not void the bills gateways still carry.
const PriceGrace = 24 * time.Hour

// priceEra is a price table and when the peer stopped serving it.
type priceEra struct {
	Table   economy.PriceTable `json:"table"`
	Since   time.Time          `json:"since"`
	Retired time.Time          `json:"retired,omitzero"` // zero: served now
}

// priceHistory is every table served within PriceGrace, kept in a file.
type priceHistory struct {
	path string
	eras []priceEra
}

// loadPriceHistory reads path (missing = empty), records current as the
// table served from now on, drops eras retired longer ago than PriceGrace
// and writes the file back.
func loadPriceHistory(path string, current economy.PriceTable, now time.Time) (*priceHistory, error) {
	h := &priceHistory{path: path}
	if path != "" {
		data, err := os.ReadFile(path)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, err
		default:
			if err := json.Unmarshal(data, &h.eras); err != nil {
				return nil, fmt.Errorf("settlement: price history %s: %w", path, err)
			}
		}
	}
	kept := h.eras[:0]
	for _, e := range h.eras {
		if e.Retired.IsZero() {
			if reflect.DeepEqual(e.Table, current) {
				kept = append(kept, e) // the same table, still served
				continue
			}
			e.Retired = now
		}
		if now.Sub(e.Retired) <= PriceGrace {
			kept = append(kept, e)
		}
	}
	h.eras = kept
	if n := len(h.eras); n == 0 || !h.eras[n-1].Retired.IsZero() {
		h.eras = append(h.eras, priceEra{Table: current, Since: now})
	}
	if path == "" {
		return h, nil
	}
	data, _ := json.Marshal(h.eras)
	return h, p2p.WriteFileAtomic(path, data, 0o600)
}

// priced reports whether price is what model cost at time at: under the
// table served then (or now).
func (h *priceHistory) priced(model string, price economy.Price, at time.Time) bool {
	for _, e := range h.eras {
		if e.Table.For(model) != price {
			continue
		}
		if e.Retired.IsZero() || !at.After(e.Retired) {
			return true
		}
	}
	return false
}
