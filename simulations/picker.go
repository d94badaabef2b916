package simulations

import (
	"math/rand/v2"
	"time"

	"github.com/tokenrouter/tokenrouter/gateway/route"
)

// Policies a gateway can route by. PolicyTable is the live gateway's own
// route.Table; the others are baselines the herd scenario compares it with.
const (
	PolicyTable       = "table"        // gateway/route: least-loaded with in-flight correction, tie band, breaker, floor
	PolicyLeastLoaded = "least-loaded" // the most spare per gossip alone: no in-flight correction, no tie band
	PolicyP2C         = "p2c"          // power of two choices on gossip plus this gateway's own calls
)

// picker is one gateway's routing for one model, addressed by node index.
type picker interface {
	add(n int32, id string)
	remove(n int32)
	setLoad(n int32, l route.Load, now time.Time)
	setHealth(n int32, score float64)
	pick(now time.Time, exclude []int32) int32
	release(n int32, o route.Outcome, now time.Time)
	observe(n int32, tokens int64, d time.Duration, now time.Time)
	// idle reports whether n is a candidate with nothing in flight in this gateway's view.
	idle(n int32, now time.Time) bool
	// open reports whether the breaker has n parked (or probing).
	open(n int32, now time.Time) bool
}

func (w *world) newPicker(rnd *rand.Rand, _ int) (picker, error) {
	switch w.policy {
	case PolicyLeastLoaded, PolicyP2C:
		return &simplePicker{p2c: w.policy == PolicyP2C, rnd: rnd, idx: map[int32]int{}}, nil
	}
	t, err := route.NewTable(w.rcfg, rnd)
	if err != nil {
		return nil, err
	}
	return &tablePicker{t: t, h: map[int32]route.Handle{}}, nil
}

// tablePicker is the live route.Table: the simulator calls it, never a copy.
type tablePicker struct {
	t      *route.Table
	h      map[int32]route.Handle
	nodeOf []int32 // by handle
}

func (p *tablePicker) add(n int32, id string) {
	if _, ok := p.h[n]; ok {
		return
	}
	h := p.t.Add(id)
	p.h[n] = h
	for int(h) >= len(p.nodeOf) {
		p.nodeOf = append(p.nodeOf, -1)
	}
	p.nodeOf[h] = n
}

func (p *tablePicker) remove(n int32) {
	if h, ok := p.h[n]; ok {
		p.t.Remove(h)
		delete(p.h, n)
	}
}

func (p *tablePicker) setLoad(n int32, l route.Load, now time.Time) {
	if h, ok := p.h[n]; ok {
		p.t.SetLoad(h, l, now)
	}
}

func (p *tablePicker) setHealth(n int32, s float64) {
	if h, ok := p.h[n]; ok {
		p.t.SetHealth(h, s)
	}
}

func (p *tablePicker) pick(now time.Time, exclude []int32) int32 {
	var buf [4]route.Handle
	ex := buf[:0]
	for _, n := range exclude {
		if h, ok := p.h[n]; ok {
			ex = append(ex, h)
		}
	}
	h := p.t.Pick(now, ex)
	if h == route.None {
		return -1
	}
	return p.nodeOf[h]
}

func (p *tablePicker) release(n int32, o route.Outcome, now time.Time) {
	if h, ok := p.h[n]; ok {
		p.t.Release(h, o, now)
	}
}

func (p *tablePicker) observe(n int32, tokens int64, d time.Duration, now time.Time) {
	if h, ok := p.h[n]; ok {
		p.t.ObserveRate(h, tokens, d, now)
	}
}

func (p *tablePicker) idle(n int32, now time.Time) bool {
	h, ok := p.h[n]
	if !ok {
		return false
	}
	i, _ := p.t.Info(h, now)
	return i.Candidate && !i.Spill && i.InFlight+i.Local == 0
}

func (p *tablePicker) open(n int32, now time.Time) bool {
	h, ok := p.h[n]
	if !ok {
		return false
	}
	i, _ := p.t.Info(h, now)
	return i.Breaker != "closed"
}

// simplePicker is a baseline: no breaker, no floor, no tie band.
type simplePicker struct {
	p2c     bool
	rnd     *rand.Rand
	idx     map[int32]int
	members []int32
	cap     []float64
	gossip  []int
	local   []int
}

func (p *simplePicker) add(n int32, _ string) {
	if _, ok := p.idx[n]; ok {
		return
	}
	p.idx[n] = len(p.members)
	p.members = append(p.members, n)
	p.cap = append(p.cap, 0)
	p.gossip = append(p.gossip, 0)
	p.local = append(p.local, 0)
}

func (p *simplePicker) remove(n int32) {
	i, ok := p.idx[n]
	if !ok {
		return
	}
	last := len(p.members) - 1
	p.members[i], p.cap[i], p.gossip[i], p.local[i] = p.members[last], p.cap[last], p.gossip[last], p.local[last]
	p.idx[p.members[i]] = i
	p.members, p.cap, p.gossip, p.local = p.members[:last], p.cap[:last], p.gossip[:last], p.local[:last]
	delete(p.idx, n)
}

func (p *simplePicker) setLoad(n int32, l route.Load, _ time.Time) {
	if i, ok := p.idx[n]; ok {
		p.cap[i], p.gossip[i] = max(l.Declared, l.Capacity), l.InFlight
	}
}

func (p *simplePicker) setHealth(int32, float64) {}

func (p *simplePicker) spare(i int) float64 {
	if p.cap[i] <= 0 {
		return 0
	}
	busy := p.gossip[i]
	if p.p2c {
		busy += p.local[i]
	}
	return 1 - float64(busy)/p.cap[i]
}

func excluded(n int32, ex []int32) bool {
	for _, x := range ex {
		if x == n {
			return true
		}
	}
	return false
}

func (p *simplePicker) pick(_ time.Time, exclude []int32) int32 {
	best := -1
	if p.p2c && len(p.members) >= 2 {
		for range 4 { // two distinct draws not excluded
			a, b := p.rnd.IntN(len(p.members)), p.rnd.IntN(len(p.members)-1)
			if b >= a {
				b++
			}
			if excluded(p.members[a], exclude) || excluded(p.members[b], exclude) {
				continue
			}
			best = a
			if p.spare(b) > p.spare(a) {
				best = b
			}
			break
		}
	}
	if best < 0 || p.spare(best) <= 0 { // least-loaded scan; random among exact ties
		best = -1
		ties := 0
		for i, n := range p.members {
			if excluded(n, exclude) || p.spare(i) <= 0 {
				continue
			}
			switch {
			case best < 0 || p.spare(i) > p.spare(best):
				best, ties = i, 1
			case p.spare(i) == p.spare(best):
				ties++
				if p.rnd.IntN(ties) == 0 {
					best = i
				}
			}
		}
	}
	if best < 0 {
		return -1
	}
	p.local[best]++
	return p.members[best]
}

func (p *simplePicker) release(n int32, o route.Outcome, _ time.Time) {
	if i, ok := p.idx[n]; ok {
		p.local[i] = max(p.local[i]-1, 0)
		if o == route.Full {
			p.gossip[i] = int(p.cap[i])
		}
	}
}

func (p *simplePicker) observe(int32, int64, time.Duration, time.Time) {}

func (p *simplePicker) idle(n int32, _ time.Time) bool {
	i, ok := p.idx[n]
	return ok && p.gossip[i]+p.local[i] == 0 && p.cap[i] > 0
}

func (p *simplePicker) open(int32, time.Time) bool { return false }
