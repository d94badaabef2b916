package simulations

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func tinySeries() Series {
	return Series{
		Name:    "tiny",
		Title:   "Tiny series",
		XLabel:  "Time (hours)",
		YLabel:  "share of calls",
		X:       []float64{0, 0.5, 1},
		Columns: []string{"local", "remote, peer"},
		Y: [][]float64{
			{0.1, math.NaN(), 1.0 / 3},
			{1e-9, 2.5e21, -0},
		},
	}
}

func TestSeriesValidate(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		name    string
		mutate  func(*Series)
		wantErr string // "" means valid
	}{
		{"ok", func(*Series) {}, ""},
		{"nan in y ok", func(s *Series) { s.Y[0][0] = nan }, ""},
		{"inf in y ok", func(s *Series) { s.Y[1][2] = math.Inf(1) }, ""},
		{"empty x ok", func(s *Series) { s.X = nil; s.Y = [][]float64{nil, {}} }, ""},
		{"name with dash and digits ok", func(s *Series) { s.Name = "load-2_b" }, ""},
		{"empty name", func(s *Series) { s.Name = "" }, "empty name"},
		{"upper case name", func(s *Series) { s.Name = "Tiny" }, "name must match"},
		{"slash in name", func(s *Series) { s.Name = "../x" }, "name must match"},
		{"space in name", func(s *Series) { s.Name = "a b" }, "name must match"},
		{"dot in name", func(s *Series) { s.Name = "a.csv" }, "name must match"},
		{"no columns", func(s *Series) { s.Columns = nil; s.Y = nil }, "no columns"},
		{"empty column name", func(s *Series) { s.Columns[1] = "" }, "empty name"},
		{"duplicate column", func(s *Series) { s.Columns[1] = "local" }, "both named"},
		{"fewer Y than columns", func(s *Series) { s.Y = s.Y[:1] }, "2 columns named but 1"},
		{"ragged short", func(s *Series) { s.Y[1] = s.Y[1][:2] }, "has 2 values, X has 3"},
		{"ragged long", func(s *Series) { s.Y[0] = append(s.Y[0], 4) }, "has 4 values, X has 3"},
		{"nan in x", func(s *Series) { s.X[1] = nan }, "must be finite"},
		{"inf in x", func(s *Series) { s.X[2] = math.Inf(-1) }, "must be finite"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := tinySeries()
			tc.mutate(&s)
			err := s.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("Validate() = nil, want error containing %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("Validate() = %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestWriteCSV(t *testing.T) {
	tests := []struct {
		name string
		s    Series
		want string
	}{
		{
			name: "tiny",
			s:    tinySeries(),
			want: "time_hours,local,\"remote, peer\"\n" +
				"0,0.1,1e-09\n" +
				"0.5,,2.5e+21\n" +
				"1,0.3333333333333333,0\n",
		},
		{
			name: "inf and empty label",
			s: Series{
				Name: "inf", Columns: []string{"a"},
				X: []float64{-1, 1e6}, Y: [][]float64{{math.Inf(1), math.Inf(-1)}},
			},
			want: "x,a\n-1,+Inf\n1e+06,-Inf\n",
		},
		{
			name: "no rows",
			s:    Series{Name: "empty", XLabel: "load", Columns: []string{"p50", "p99"}, Y: [][]float64{nil, nil}},
			want: "load,p50,p99\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := WriteCSV(dir, tc.s); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, tc.s.Name+".csv")
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("CSV mismatch\n got: %q\nwant: %q", got, tc.want)
			}
			checkFileMode(t, path)
			checkNoTempFiles(t, dir)
		})
	}
}

func TestWriteCSVInvalid(t *testing.T) {
	dir := t.TempDir()
	s := tinySeries()
	s.Name = "Bad Name"
	if err := WriteCSV(dir, s); err == nil {
		t.Fatal("WriteCSV accepted an invalid series")
	}
	if err := WriteSVG(dir, s); err == nil {
		t.Fatal("WriteSVG accepted an invalid series")
	}
	checkNoTempFiles(t, dir)
}

func TestWriteSVG(t *testing.T) {
	many := Series{Name: "many", Title: "Twenty lines", XLabel: "hours", YLabel: "calls"}
	for c := range 20 {
		many.Columns = append(many.Columns, fmt.Sprintf("node-%02d", c))
		col := make([]float64, 50)
		for i := range col {
			col[i] = float64(c) + math.Sin(float64(i)/5)
		}
		many.Y = append(many.Y, col)
	}
	for i := range 50 {
		many.X = append(many.X, float64(i)/2)
	}

	gaps := tinySeries()
	gaps.Name = "gaps"
	gaps.Title = "Gaps in lines"
	gaps.X = []float64{0, 1, 2, 3, 4, 5, 6}
	gaps.Y = [][]float64{
		{math.NaN(), 1, 2, math.NaN(), 4, math.NaN(), 6}, // segment + isolated points
		{math.NaN(), math.NaN(), math.NaN(), math.NaN(), math.NaN(), math.NaN(), math.NaN()},
	}

	allNaN := Series{
		Name: "all-nan", Title: "Only missing values", Columns: []string{"a"},
		X: []float64{1, 2}, Y: [][]float64{{math.NaN(), math.Inf(1)}},
	}
	empty := Series{Name: "empty", Title: "No rows", Columns: []string{"a"}, Y: [][]float64{nil}}
	single := Series{Name: "single", Title: "One point", Columns: []string{"a"}, X: []float64{3}, Y: [][]float64{{7}}}

	tests := []struct {
		name     string
		s        Series
		contains []string
		absent   []string
	}{
		{"tiny", tinySeries(), []string{"Tiny series", "Time (hours)", "share of calls", "local", "remote, peer"}, nil},
		{"many columns", many, []string{"Twenty lines", "node-00", "node-11", "… 8 more"}, []string{"node-12", "node-19"}},
		{"nan gaps", gaps, []string{"Gaps in lines", "local", "remote, peer"}, nil},
		{"all nan", allNaN, []string{"Only missing values"}, nil},
		{"no rows", empty, []string{"No rows"}, nil},
		{"single point", single, []string{"One point"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, tc.s.Name+".svg")
			if err := WriteSVG(dir, tc.s); err != nil {
				t.Fatal(err)
			}
			first, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(first, []byte("<?xml")) && !bytes.HasPrefix(first, []byte("<svg")) {
				t.Fatalf("SVG starts with %q", first[:min(len(first), 40)])
			}
			for _, want := range tc.contains {
				if !bytes.Contains(first, []byte(htmlEscape(want))) {
					t.Errorf("SVG does not contain %q", want)
				}
			}
			for _, bad := range tc.absent {
				if bytes.Contains(first, []byte(bad)) {
					t.Errorf("SVG contains %q, which should be left out of the legend", bad)
				}
			}
			if bytes.Contains(first, []byte("NaN")) {
				t.Error("SVG contains NaN coordinates")
			}
			checkFileMode(t, path)

			if err := WriteSVG(dir, tc.s); err != nil {
				t.Fatal(err)
			}
			second, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(first, second) {
				t.Error("second WriteSVG produced different bytes")
			}
			checkNoTempFiles(t, dir)
		})
	}
}

func TestWriteAll(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out", "run1")
	a := tinySeries()
	b := tinySeries()
	b.Name = "tiny-2"
	if err := WriteAll(dir, []Series{a, b}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tiny.csv", "tiny.svg", "tiny-2.csv", "tiny-2.svg"} {
		checkFileMode(t, filepath.Join(dir, f))
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 4 {
		t.Errorf("dir has %d entries, want 4", len(entries))
	}
	bad := tinySeries()
	bad.Y[0] = bad.Y[0][:1]
	if err := WriteAll(dir, []Series{bad}); err == nil {
		t.Error("WriteAll accepted a ragged series")
	}
}

func TestProgressSilent(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()

	var buf bytes.Buffer
	tests := []struct {
		name  string
		w     interface{ Write([]byte) (int, error) }
		total int64
	}{
		{"buffer", &buf, 1000},
		{"pipe", w, 1000},
		{"pipe zero total", w, 0},
		{"nil writer", nil, 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := NewProgress(tc.w, tc.total, "simulating")
			for i := range tc.total + 5 {
				p.Set(i)
			}
			p.Set(-3)
			p.Finish()
			p.Finish()
			p.Set(tc.total)
		})
	}
	if buf.Len() != 0 {
		t.Errorf("Progress wrote %q to a bytes.Buffer", buf.String())
	}
	w.Close()
	got, err := readAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Errorf("Progress wrote %q to a pipe", got)
	}

	var nilP *Progress
	nilP.Set(1)
	nilP.Finish()
}

func readAll(r *os.File) ([]byte, error) {
	var out bytes.Buffer
	_, err := out.ReadFrom(r)
	return out.Bytes(), err
}

func htmlEscape(s string) string {
	r := strings.NewReplacer("&", "&amp;", "'", "&#39;", "<", "&lt;", ">", "&gt;", `"`, "&#34;")
	return r.Replace(s)
}

func checkFileMode(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o644 {
		t.Errorf("%s has mode %v, want 0644", filepath.Base(path), got)
	}
}

func checkNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}
