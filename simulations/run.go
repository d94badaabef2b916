package simulations

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Options are a run's knobs outside the scenario.
type Options struct {
	Seed     uint64
	Progress func(done, total int64) // simulated time done of total, ns; nil = quiet
}

// Summary is summary.json (SPEC §8): identical for the same scenario, seed
// and parameters but for wall_seconds and peak_rss_bytes, which measure the
// machine, not the network.
type Summary struct {
	Scenario     string             `json:"scenario"`
	Question     string             `json:"question,omitempty"`
	Seed         uint64             `json:"seed"`
	Nodes        int                `json:"nodes"`
	Gateways     int                `json:"gateways"`
	Requests     int64              `json:"requests"`
	SimSeconds   float64            `json:"simulated_seconds"`
	WallSeconds  float64            `json:"wall_seconds"`
	PeakRSSBytes int64              `json:"peak_rss_bytes"`
	Metrics      map[string]float64 `json:"metrics"`
	Targets      map[string]Target  `json:"targets,omitempty"`
	Groups       []GroupStats       `json:"groups"`
	Params       []string           `json:"params,omitempty"` // the --set overrides applied
}

// Target is a metric's target and whether this run met it.
type Target struct {
	Want  string  `json:"want"`
	Value float64 `json:"value"`
	Met   bool    `json:"met"`
}

// Run simulates sc and returns its summary and time series. With
// gateways.baselines the scenario runs again under each baseline policy
// (same seed) and their metrics join the summary suffixed by the policy.
func Run(sc *Scenario, opt Options) (*Summary, []Series, error) {
	start := time.Now()
	sum, series, _, err := runPolicy(sc, opt, PolicyTable)
	if err != nil {
		return nil, nil, err
	}
	for _, b := range sc.Gateways.Baselines {
		bs, _, bw, err := runPolicy(sc, Options{Seed: opt.Seed}, b)
		if err != nil {
			return nil, nil, err
		}
		suffix := "_" + strings.ReplaceAll(b, "-", "_")
		for _, k := range []string{"max_over_mean_utilization", "refused_share", "failed_call_share", "jain_index"} {
			sum.Metrics[k+suffix] = bs.Metrics[k]
		}
		for i := range series {
			if series[i].Name == "herd" {
				series[i].Columns = append(series[i].Columns, b)
				series[i].Y = append(series[i].Y, padTo(bw.series.herd, len(series[i].X)))
			}
		}
	}
	sum.Targets = map[string]Target{}
	for k, t := range sc.Targets {
		name := strings.TrimPrefix(k, "metrics.")
		v := sum.Metrics[name]
		switch name { // top-level figures
		case "requests":
			v = float64(sum.Requests)
		case "nodes":
			v = float64(sum.Nodes)
		case "wall_seconds":
			v = sum.WallSeconds
		}
		sum.Targets[name] = Target{Want: t, Value: v, Met: Met(t, v)}
	}
	sum.WallSeconds = time.Since(start).Seconds()
	sum.PeakRSSBytes = PeakRSS()
	return sum, series, nil
}

func padTo(v []float64, n int) []float64 {
	out := make([]float64, n)
	copy(out, v)
	return out
}

func runPolicy(sc *Scenario, opt Options, policy string) (*Summary, []Series, *world, error) {
	w, err := newWorld(sc, opt.Seed, policy)
	if err != nil {
		return nil, nil, nil, err
	}
	w.progress = opt.Progress
	for _, r := range sc.Ratios {
		if r.Of == "share_when_idle" {
			w.shareWhenIdle = &idleShare{num: w.groupIndex(r.Num), den: w.groupIndex(r.Den)}
		}
	}
	w.run()
	groups := w.groupStats()
	sum := &Summary{
		Scenario:   sc.Name,
		Question:   sc.Question,
		Seed:       opt.Seed,
		Nodes:      len(w.nodes),
		Gateways:   len(w.gws),
		Requests:   w.stats.calls,
		SimSeconds: sc.Duration.D().Seconds(),
		Metrics:    w.metrics(groups),
		Groups:     groups,
	}
	return sum, w.timeSeries(), w, nil
}

func (w *world) groupIndex(name string) int32 {
	for g := range w.groups {
		if w.groups[g].name == name {
			return int32(g)
		}
	}
	return -1
}

// timeSeries turns the samples into the CSV files and plots.
func (w *world) timeSeries() []Series {
	s := &w.series
	var groupCols []string
	for _, g := range w.groups {
		groupCols = append(groupCols, g.name)
	}
	shareCols := groupCols
	if s.perNode {
		shareCols = nil
		for i := range w.nodes {
			shareCols = append(shareCols, fmt.Sprintf("%s-%d", w.groups[w.nodes[i].group].name, i))
		}
	}
	var modelCols []string
	for _, m := range w.models {
		modelCols = append(modelCols, m.Name)
	}
	x := slices.Clone(s.hours)
	return []Series{
		{Name: "shares", Title: w.sc.Name + ": share of calls served", XLabel: "hours", YLabel: "share of calls", X: x, Columns: shareCols, Y: s.shares},
		{Name: "utilization", Title: w.sc.Name + ": utilisation by group", XLabel: "hours", YLabel: "calls in flight / capacity", X: x, Columns: groupCols, Y: s.util},
		{Name: "profit", Title: w.sc.Name + ": profit per operator", XLabel: "hours", YLabel: "credits per operator", X: x, Columns: groupCols, Y: s.earned},
		{Name: "herd", Title: w.sc.Name + ": most loaded node over the mean", XLabel: "hours", YLabel: "max / mean utilisation", X: x, Columns: []string{PolicyTable}, Y: [][]float64{s.herd}},
		{Name: "supply", Title: w.sc.Name + ": instances per model", XLabel: "hours", YLabel: "instances online", X: x, Columns: modelCols, Y: s.model},
		{Name: "unserved", Title: w.sc.Name + ": calls refused or failed", XLabel: "hours", YLabel: "share of calls", X: x, Columns: []string{"unserved"}, Y: [][]float64{s.refused}},
	}
}

// WriteSummary writes summary.json into dir.
func WriteSummary(dir string, s *Summary) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".summary.json.tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "summary.json"))
}

// PeakRSS is the process's peak resident set so far, in bytes (0 where the
// system does not say).
func PeakRSS() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	if runtime.GOOS == "darwin" {
		return ru.Maxrss // bytes there
	}
	return ru.Maxrss * 1024 // KiB on Linux
}
