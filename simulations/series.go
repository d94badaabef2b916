package simulations

import (
	"fmt"
	"math"
)

// Series is one time series (or sweep table) the simulator writes as a CSV
// file and an SVG plot: X values and one column of Y per line.
type Series struct {
	Name    string      // file stem: Name+".csv", Name+".svg"; [a-z0-9_-]+
	Title   string      // the plot's title
	XLabel  string      // e.g. "hours"
	YLabel  string      // e.g. "share of calls"
	X       []float64   // must be finite (no NaN or ±Inf)
	Columns []string    // one name per line; non-empty and unique
	Y       [][]float64 // Y[c][i] is column c at X[i]; len(Y)==len(Columns), len(Y[c])==len(X)
}

// Validate reports a malformed series: a Name outside [a-z0-9_-]+, no
// columns, an empty or duplicate column name, len(Y) != len(Columns), a
// column whose length differs from len(X), or a non-finite X value.
//
// NaN in Y is allowed: it is written as an empty CSV field and as a gap in
// the plot. ±Inf in Y is allowed too: it is written as "+Inf"/"-Inf" in CSV
// and as a gap in the plot.
func (s Series) Validate() error {
	if s.Name == "" {
		return fmt.Errorf("series: empty name")
	}
	for _, r := range s.Name {
		if !validNameRune(r) {
			return fmt.Errorf("series %q: name must match [a-z0-9_-]+ (bad character %q)", s.Name, r)
		}
	}
	if len(s.Columns) == 0 {
		return fmt.Errorf("series %q: no columns", s.Name)
	}
	seen := make(map[string]int, len(s.Columns))
	for c, name := range s.Columns {
		if name == "" {
			return fmt.Errorf("series %q: column %d has an empty name", s.Name, c)
		}
		if prev, dup := seen[name]; dup {
			return fmt.Errorf("series %q: columns %d and %d are both named %q", s.Name, prev, c, name)
		}
		seen[name] = c
	}
	if len(s.Y) != len(s.Columns) {
		return fmt.Errorf("series %q: %d columns named but %d columns of Y", s.Name, len(s.Columns), len(s.Y))
	}
	for c, col := range s.Y {
		if len(col) != len(s.X) {
			return fmt.Errorf("series %q: column %q has %d values, X has %d", s.Name, s.Columns[c], len(col), len(s.X))
		}
	}
	for i, x := range s.X {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return fmt.Errorf("series %q: X[%d] is %v, must be finite", s.Name, i, x)
		}
	}
	return nil
}

func validNameRune(r rune) bool {
	return (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '_' || r == '-'
}
