package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// `tokenrouter sim` as a researcher runs it: summary.json with SPEC §8's
// fields, CSV series and SVG plots; no progress bar when stderr is not a
// terminal; the same seed gives the same summary; a sweep writes one table.
func TestSimCommand(t *testing.T) {
	dir := t.TempDir()
	run := func(out string, args ...string) (string, string) {
		t.Helper()
		cmd := exec.Command(binary, append([]string{"sim", "--scenario", "fairness", "--short", "--seed", "5", "--out", out}, args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("tokenrouter sim %v: %v\n%s%s", args, err, stdout.String(), stderr.String())
		}
		return stdout.String(), stderr.String()
	}
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	stdout, stderr := run(a)
	run(b)
	if stderr != "" {
		t.Errorf("stderr is not a terminal, yet the run wrote to it: %q", stderr)
	}
	if !strings.Contains(stdout, "jain_index") || !strings.Contains(stdout, "met") {
		t.Errorf("no metric in the output:\n%s", stdout)
	}
	var sa, sb map[string]any
	for _, p := range []struct {
		dir string
		s   *map[string]any
	}{{a, &sa}, {b, &sb}} {
		raw, err := os.ReadFile(filepath.Join(p.dir, "summary.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, p.s); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"scenario", "seed", "nodes", "requests", "wall_seconds", "metrics", "peak_rss_bytes"} {
			if _, ok := (*p.s)[f]; !ok {
				t.Errorf("summary.json has no %q", f)
			}
		}
		for _, f := range []string{"shares.csv", "shares.svg", "utilization.svg", "profit.svg"} {
			if st, err := os.Stat(filepath.Join(p.dir, f)); err != nil || st.Size() == 0 {
				t.Errorf("%s: %v", f, err)
			}
		}
		delete(*p.s, "wall_seconds")
		delete(*p.s, "peak_rss_bytes")
	}
	ja, _ := json.Marshal(sa)
	jb, _ := json.Marshal(sb)
	if string(ja) != string(jb) {
		t.Errorf("same seed, different summaries:\n%s\n%s", ja, jb)
	}
	sw := filepath.Join(dir, "sweep")
	out, _ := run(sw, "--sweep", "consumers.rate=2,4")
	table, err := os.ReadFile(filepath.Join(sw, "sweep.csv"))
	if err != nil || !strings.HasPrefix(string(table), "consumers.rate,jain_index\n2,") || strings.Count(string(table), "\n") != 3 {
		t.Errorf("sweep table %q (%v); output:\n%s", table, err, out)
	}
	bad := exec.Command(binary, "sim", "--scenario", "fairness", "--out", dir, "--set", "consumers.rate=-3")
	if msg, err := bad.CombinedOutput(); err == nil || !strings.Contains(string(msg), "consumers.rate") {
		t.Errorf("a negative rate: err %v, %s", err, msg)
	}
}
