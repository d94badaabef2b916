package simulations

import (
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// SweepPoint is one value of a sweep and its run.
type SweepPoint struct {
	Value   string
	Summary *Summary
	Series  []Series
}

// ParseSweep reads "path=v1,v2,...".
func ParseSweep(s string) (path string, values []string, err error) {
	path, list, ok := strings.Cut(s, "=")
	if !ok || strings.TrimSpace(path) == "" || strings.TrimSpace(list) == "" {
		return "", nil, fmt.Errorf("%w: --sweep %q: want path=v1,v2,...", ErrBadParam, s)
	}
	for _, v := range strings.Split(list, ",") {
		values = append(values, strings.TrimSpace(v))
	}
	return strings.TrimSpace(path), values, nil
}

// SweepMetrics are the metrics a sweep table shows: the scenario's targets
// and ratios, else every metric.
func SweepMetrics(sc *Scenario, s *Summary) []string {
	seen := map[string]bool{}
	for k := range sc.Targets {
		seen[strings.TrimPrefix(k, "metrics.")] = true
	}
	for k := range sc.Ratios {
		seen[k] = true
	}
	for k := range s.Metrics {
		for base := range seen {
			if strings.HasPrefix(k, base+"_") && k != base {
				seen[k] = true // a baseline's figure of the same metric
			}
		}
	}
	if len(seen) == 0 {
		for k := range s.Metrics {
			seen[k] = true
		}
	}
	var out []string
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// WriteSweep writes sweep.csv (one row per value: the value, then each
// metric) and sweep.svg (each metric against the value) into dir.
func WriteSweep(dir, path string, metrics []string, points []SweepPoint) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "sweep.csv"))
	if err != nil {
		return err
	}
	cw := csv.NewWriter(f)
	cw.Write(append([]string{path}, metrics...))
	numeric := true
	for _, p := range points {
		row := []string{p.Value}
		for _, m := range metrics {
			row = append(row, strconv.FormatFloat(p.Summary.Metrics[m], 'g', -1, 64))
		}
		cw.Write(row)
		if _, err := strconv.ParseFloat(p.Value, 64); err != nil {
			numeric = false
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	s := Series{Name: "sweep", Title: "sweep of " + path, XLabel: path, YLabel: "metric", Columns: metrics}
	if !numeric {
		s.XLabel = path + " (index of value)"
	}
	s.Y = make([][]float64, len(metrics))
	for i, p := range points {
		x := float64(i)
		if numeric {
			x, _ = strconv.ParseFloat(p.Value, 64)
		}
		s.X = append(s.X, x)
		for c, m := range metrics {
			s.Y[c] = append(s.Y[c], p.Summary.Metrics[m])
		}
	}
	return WriteSVG(dir, s)
}
