package simulations

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// stats are a run's running totals.
type stats struct {
	calls, served, failed, refused, badInput int64
	tokens                                   int64
	refusedWithFree, refusedStale            int64
	neutralParks                             int64
	belowFloor, belowFloorMeasuring          int64
	contended, contendedNew                  int64
	before, after                            struct{ calls, refused int64 }
	perModel                                 []struct{ calls, refused int64 }

	// Money, µcr: what consumers paid and where it went.
	consumerPaid, providers, platform, pool int64

	// Utilisation samples: Σ max/mean and how many.
	herdSum float64
	herdN   int64
}

func (s *stats) init(models int) {
	s.perModel = make([]struct{ calls, refused int64 }, models)
}

type groupAcc struct {
	name   string
	nodes  int
	served int64
}

// beforeUntil and afterFrom split a run for the bounty metrics: "before" is
// until bounties start; "after" is the second half of the time after.
func (w *world) beforeUntil() int64 {
	if !w.sc.Economy.Bounties {
		return epoch0
	}
	return epoch0 + int64(w.sc.Economy.BountiesFrom)
}

func (w *world) afterFrom() int64 {
	if !w.sc.Economy.Bounties {
		return math.MaxInt64
	}
	b := w.beforeUntil()
	return b + (w.end-b)/2
}

// seriesAcc collects time series, one row per SampleEvery.
type seriesAcc struct {
	cur struct {
		calls, served, failed, refused int64
		byGroup                        []int64
	}
	hours                       []float64
	shares, util, earned, model [][]float64 // [column][row]
	herd                        []float64
	refused                     []float64
	perNode                     bool
	utilEvery                   int64
	nextUtil                    int64
	herdRowSum                  float64
	herdRowN                    int
}

func (s *seriesAcc) init(w *world) {
	s.perNode = len(w.nodes) <= 12
	cols := len(w.groups)
	if s.perNode {
		cols = len(w.nodes)
	}
	s.cur.byGroup = make([]int64, cols)
	s.shares = make([][]float64, cols)
	s.util = make([][]float64, len(w.groups))
	s.earned = make([][]float64, len(w.groups))
	s.model = make([][]float64, len(w.models))
	s.utilEvery = int64(time.Second)
}

// sample records a row of the time series, and the herd metric every second.
func (w *world) sample() {
	s := &w.series
	w.schedule(w.now+s.utilEvery, evSample, 0, 0, 0)
	w.herdSample()
	if w.now < epoch0+int64(len(s.hours)+1)*int64(w.sc.SampleEvery) {
		return
	}
	s.hours = append(s.hours, float64(w.now-epoch0)/float64(time.Hour))
	var total int64
	for _, v := range s.cur.byGroup {
		total += v
	}
	for c, v := range s.cur.byGroup {
		s.shares[c] = append(s.shares[c], ratio(float64(v), float64(total)))
		s.cur.byGroup[c] = 0
	}
	busy := make([]float64, len(w.groups))
	capa := make([]float64, len(w.groups))
	earned := make([]float64, len(w.groups))
	coverage := make([]float64, len(w.models))
	for i := range w.nodes {
		n := &w.nodes[i]
		earned[n.group] += float64(n.earned) - float64(w.sc.Nodes[n.group].CostPerHour)*float64(w.onlineNs(n))/float64(time.Hour)
		if n.online {
			busy[n.group] += float64(min(n.inFlight, n.capacity))
			capa[n.group] += float64(n.capacity)
			coverage[n.model]++
		}
	}
	for g := range w.groups {
		s.util[g] = append(s.util[g], ratio(busy[g], capa[g]))
		s.earned[g] = append(s.earned[g], earned[g]/float64(max(w.groups[g].nodes, 1))/1e6)
	}
	for m := range w.models {
		s.model[m] = append(s.model[m], coverage[m])
	}
	s.herd = append(s.herd, ratio(s.herdRowSum, float64(s.herdRowN)))
	s.herdRowSum, s.herdRowN = 0, 0
	s.refused = append(s.refused, ratio(float64(s.cur.refused+s.cur.failed), float64(s.cur.calls)))
	s.cur.calls, s.cur.served, s.cur.failed, s.cur.refused = 0, 0, 0, 0
}

func (w *world) onlineNs(n *node) int64 {
	if n.online {
		return n.onlineNs + w.now - n.onlineSince
	}
	return n.onlineNs
}

// herdSample: the most loaded online node's utilisation over the mean.
func (w *world) herdSample() {
	var sum, top float64
	k := 0
	for i := range w.nodes {
		n := &w.nodes[i]
		if !n.online {
			continue
		}
		u := float64(n.inFlight) / float64(n.capacity)
		sum += u
		top = max(top, u)
		k++
	}
	if k == 0 || sum == 0 {
		return
	}
	r := top / (sum / float64(k))
	w.stats.herdSum += r
	w.stats.herdN++
	w.series.herdRowSum += r
	w.series.herdRowN++
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// idleShare measures whether two groups are equal candidates: over the
// picks where the deciding gateway saw an idle candidate of each, how often
// each won against how often it would at random.
type idleShare struct {
	num, den       int32
	pending        bool
	expNum, expDen float64
	winNum, winDen float64
	buf            []int32
}

func (s *idleShare) before(w *world, p picker, m int32, now time.Time) {
	s.pending = false
	var a, b float64
	for i := range w.nodes {
		n := &w.nodes[i]
		if n.model != m || (n.group != s.num && n.group != s.den) || !p.idle(int32(i), now) {
			continue
		}
		if n.group == s.num {
			a++
		} else {
			b++
		}
	}
	if a == 0 || b == 0 {
		return
	}
	s.pending = true
	s.expNum += a / (a + b)
	s.expDen += b / (a + b)
}

func (s *idleShare) after(w *world, n int32) {
	if !s.pending {
		return
	}
	s.pending = false
	switch w.nodes[n].group {
	case s.num:
		s.winNum++
	case s.den:
		s.winDen++
	}
}

func (s *idleShare) value() float64 {
	if s.expNum == 0 || s.expDen == 0 || s.winDen == 0 {
		return 0
	}
	return (s.winNum / s.expNum) / (s.winDen / s.expDen)
}

// groupFigures are what a ratio can compare between two groups.
var groupFigures = map[string]string{
	"calls_per_node":  "calls served per node",
	"earned_per_node": "credits earned per operator",
	"profit_per_node": "credits earned less cost_per_hour for the time online, per operator",
	"share_when_idle": "wins over fair-share wins, over picks where the gateway saw an idle candidate of both groups",
}

func figureNames() []string {
	var out []string
	for k := range groupFigures {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// GroupStats is one node group's result.
type GroupStats struct {
	Name          string  `json:"name"`
	Nodes         int     `json:"nodes"`
	Served        int64   `json:"served"`
	Failures      int64   `json:"failures"`
	Parks         int64   `json:"parks"`
	EarnedUcr     int64   `json:"earned_ucr"`
	ProfitUcr     int64   `json:"profit_ucr"`
	CallsPerNode  float64 `json:"calls_per_node"`
	EarnedPerNode float64 `json:"earned_per_node"`
	ProfitPerNode float64 `json:"profit_per_node"`
	Identities    int64   `json:"identities"`
	Switches      int64   `json:"switches"`
	OnlineHours   float64 `json:"online_hours"`
}

func (w *world) groupStats() []GroupStats {
	out := make([]GroupStats, len(w.groups))
	for g := range w.groups {
		out[g].Name, out[g].Nodes = w.groups[g].name, w.groups[g].nodes
	}
	for i := range w.nodes {
		n := &w.nodes[i]
		g := &out[n.group]
		g.Served += n.served
		g.Failures += n.failures
		g.Parks += n.parks
		g.EarnedUcr += n.earned
		online := w.onlineNs(n)
		g.ProfitUcr += n.earned - int64(float64(w.sc.Nodes[n.group].CostPerHour)*float64(online)/float64(time.Hour))
		g.Identities += n.identities
		g.Switches += n.switches
		g.OnlineHours += float64(online) / float64(time.Hour)
	}
	for g := range out {
		k := float64(max(out[g].Nodes, 1))
		out[g].CallsPerNode = float64(out[g].Served) / k
		out[g].EarnedPerNode = float64(out[g].EarnedUcr) / k
		out[g].ProfitPerNode = float64(out[g].ProfitUcr) / k
		out[g].OnlineHours = round6(out[g].OnlineHours)
	}
	return out
}

// metrics computes SPEC §8's metrics and the scenario's ratios.
func (w *world) metrics(groups []GroupStats) map[string]float64 {
	s := &w.stats
	m := map[string]float64{
		"calls":                       float64(s.calls),
		"served":                      float64(s.served),
		"tokens":                      float64(s.tokens),
		"failed_call_share":           ratio(float64(s.failed), float64(s.calls-s.badInput)),
		"refused_share":               ratio(float64(s.refused), float64(s.calls)),
		"bad_input_calls":             float64(s.badInput),
		"neutral_parks":               float64(s.neutralParks),
		"refused_with_free_capacity":  float64(s.refusedWithFree),
		"refused_on_stale_view":       float64(s.refusedStale),
		"below_floor_share":           ratio(float64(s.belowFloor), float64(s.served)),
		"below_floor_measuring_calls": float64(s.belowFloorMeasuring),
		"max_over_mean_utilization":   ratio(s.herdSum, float64(s.herdN)),
		"jain_index":                  w.jain(),
		"consumer_paid_ucr":           float64(s.consumerPaid),
		"providers_earned_ucr":        float64(s.providers),
		"platform_net_ucr":            float64(s.platform),
		"bounty_pool_ucr":             float64(s.pool),
	}
	if s.consumerPaid == s.providers+s.platform+s.pool {
		m["money_conserved"] = 1
	} else {
		m["money_conserved"] = 0
	}
	var parks int64
	for i := range w.nodes {
		parks += w.nodes[i].parks
	}
	m["parks"] = float64(parks)
	if s.contended > 0 {
		m["newcomer_share_when_contended"] = ratio(float64(s.contendedNew), float64(s.contended))
	}
	if w.sc.Economy.Bounties {
		m["unserved_demand_before"] = ratio(float64(s.before.refused), float64(s.before.calls))
		m["unserved_demand_after"] = ratio(float64(s.after.refused), float64(s.after.calls))
	}
	byName := map[string]GroupStats{}
	for _, g := range groups {
		byName[g.Name] = g
	}
	for name, r := range w.sc.Ratios {
		num, den := byName[r.Num], byName[r.Den]
		switch r.Of {
		case "calls_per_node":
			m[name] = ratio(num.CallsPerNode, den.CallsPerNode)
		case "earned_per_node":
			m[name] = ratio(num.EarnedPerNode, den.EarnedPerNode)
		case "profit_per_node":
			m[name] = ratio(num.ProfitPerNode, den.ProfitPerNode)
		case "share_when_idle":
			m[name] = w.shareWhenIdle.value()
		}
	}
	for k, v := range m {
		m[k] = round6(v)
	}
	return m
}

// round6 keeps six significant decimals, so summaries read cleanly.
func round6(v float64) float64 {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return v
	}
	p := math.Pow(10, 6-math.Ceil(math.Log10(math.Abs(v))))
	if p < 1 {
		return math.Round(v)
	}
	return math.Round(v*p) / p
}

// jain is Jain's fairness index over calls served per unit of capacity, of
// the nodes in groups without failures, spoofing or churn of their own.
func (w *world) jain() float64 {
	var sum, sq float64
	k := 0
	for i := range w.nodes {
		n := &w.nodes[i]
		x := float64(n.served) / float64(n.capacity)
		sum += x
		sq += x * x
		k++
	}
	if sq == 0 {
		return 0
	}
	return sum * sum / (float64(k) * sq)
}

// parseTarget reads ">= 0.99", "< 1.5", "== 0" or "0.9..1.1".
func parseTarget(t string) (op string, v [2]float64, err error) {
	t = strings.TrimSpace(t)
	if a, b, ok := strings.Cut(t, ".."); ok {
		lo, e1 := strconv.ParseFloat(strings.TrimSpace(a), 64)
		hi, e2 := strconv.ParseFloat(strings.TrimSpace(b), 64)
		if e1 != nil || e2 != nil || lo > hi {
			return "", v, fmt.Errorf("target %q: want lo..hi", t)
		}
		return "..", [2]float64{lo, hi}, nil
	}
	for _, o := range []string{">=", "<=", "==", ">", "<"} {
		if rest, ok := strings.CutPrefix(t, o); ok {
			x, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				return "", v, fmt.Errorf("target %q: %v", t, err)
			}
			return o, [2]float64{x}, nil
		}
	}
	return "", v, fmt.Errorf("target %q: want >= x, <= x, > x, < x, == x or lo..hi", t)
}

// Met reports whether v meets target t.
func Met(t string, v float64) bool {
	op, x, err := parseTarget(t)
	if err != nil {
		return false
	}
	switch op {
	case "..":
		return v >= x[0] && v <= x[1]
	case ">=":
		return v >= x[0]
	case "<=":
		return v <= x[0]
	case ">":
		return v > x[0]
	case "<":
		return v < x[0]
	}
	return v == x[0]
}
