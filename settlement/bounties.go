package settlement

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/tokenrouter/tokenrouter/internal/tick"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// demand counts calls gateways turned away for want of capacity, per model
// and minute, for the bounty computation.
type demand struct {
	mu        sync.Mutex
	minute    int64
	current   map[string]float64
	last      map[string]float64 // the previous full minute
	byGateway map[string]float64 // this minute's reports per gateway and model
}

// maxUnservedPerGateway caps what one gateway may report per model and
// minute: one liar can nudge a bounty, not conjure one.
const maxUnservedPerGateway = 600

// add records a gateway's unserved counts; only models the network has
// served are counted (a typo is not demand).
func (d *demand) add(gateway string, unserved map[string]uint32, rep *Reputation, now time.Time) {
	if len(unserved) == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.roll(now)
	for model, n := range unserved {
		if !rep.knowsModel(model) {
			continue
		}
		k := gateway + "|" + model
		allowed := min(float64(n), maxUnservedPerGateway-d.byGateway[k])
		if allowed > 0 {
			d.byGateway[k] += allowed
			d.current[model] += allowed
		}
	}
}

func (d *demand) roll(now time.Time) {
	m := now.Unix() / 60
	if d.current == nil {
		d.current, d.last, d.minute = map[string]float64{}, map[string]float64{}, m
	}
	switch {
	case m == d.minute:
		if d.byGateway == nil {
			d.byGateway = map[string]float64{}
		}
		return
	case m == d.minute+1:
		d.last, d.current = d.current, map[string]float64{}
	default:
		d.last, d.current = map[string]float64{}, map[string]float64{}
	}
	d.minute = m
	d.byGateway = map[string]float64{}
}

// perMinute is the unserved rate per model over the last full minute.
func (d *demand) perMinute(now time.Time) map[string]float64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.roll(now)
	out := make(map[string]float64, len(d.last))
	for k, v := range d.last {
		out[k] = v
	}
	return out
}

// bountyState is the last computed set of bounties.
type bountyState struct {
	At      time.Time        `json:"computed_at"`
	List    []economy.Bounty `json:"data"`
	byModel map[string]float64
}

// refreshBounties recomputes under-supply from gossiped capacity and load
// and gateways' unserved demand.
func (s *Settlement) refreshBounties(now time.Time) {
	supply := s.rep.Supply(now)
	unserved := s.demand.perMinute(now)
	var sds []economy.SupplyDemand
	for model, sp := range supply {
		sds = append(sds, economy.SupplyDemand{Model: model, Capacity: float64(sp.Capacity), InFlight: float64(sp.InFlight), Unserved: unserved[model]})
	}
	for model, u := range unserved {
		if _, ok := supply[model]; !ok {
			sds = append(sds, economy.SupplyDemand{Model: model, Unserved: u}) // demand with no live supply at all
		}
	}
	st := &bountyState{At: now, List: economy.Bounties(sds, s.cfg.Bounty, s.cfg.Trust), byModel: map[string]float64{}}
	for _, sd := range sds {
		if u := s.cfg.Bounty.UnderSupply(sd); u > 0 {
			st.byModel[sd.Model] = u
		}
	}
	s.bmu.Lock()
	s.bounties = st
	s.bmu.Unlock()
}

// underSupply is a model's current under-supply in [0,1].
func (s *Settlement) underSupply(model string) float64 {
	s.bmu.RLock()
	defer s.bmu.RUnlock()
	if s.bounties == nil {
		return 0
	}
	return s.bounties.byModel[model]
}

func (s *Settlement) bountyLoop(ctx context.Context, every time.Duration) {
	s.refreshBounties(time.Now())
	tick.Every(ctx, every, s.refreshBounties)
}

// getBounties is GET /v1/bounties: every under-supplied model, the payout
// multiplier each trust tier earns on it, and the pool that pays them.
func (s *Settlement) getBounties(w http.ResponseWriter, _ *http.Request) {
	s.bmu.RLock()
	st := s.bounties
	s.bmu.RUnlock()
	if st == nil {
		st = &bountyState{At: time.Now(), List: []economy.Bounty{}}
	}
	pool, _ := s.led.Account(ledger.AccountBountyPool)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(struct {
		Object  string           `json:"object"`
		At      time.Time        `json:"computed_at"`
		PoolUcr int64            `json:"pool_ucr"`
		Data    []economy.Bounty `json:"data"`
	}{"list", st.At, pool.Balance, st.List})
}
