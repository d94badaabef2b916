package mesh

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenrouter/tokenrouter/simulations"
)

// Options are a run's inputs besides the scenario.
type Options struct {
	Seed uint64
	// Log gets the run's progress lines and the hosts' warnings (nil = silent).
	Log *slog.Logger
	// Progress, if set, is called from outside the simulation with the
	// virtual milliseconds passed and the run's total.
	Progress func(done, total int64)
}

// ErrNotFinished is returned when the simulation's bubble failed (a
// deadlock, or goroutines left running) before it produced a summary.
var ErrNotFinished = errors.New("mesh: the simulation did not finish")

// Run runs spec from a program that is not a test (tokenrouter sim):
// testing/synctest needs a *testing.T, so Run starts the testing package's
// runner on a single test that calls RunT. The runner's own PASS line is
// discarded.
func Run(spec *Spec, opt Options) (*simulations.Summary, error) {
	var sum *simulations.Summary
	var err error = ErrNotFinished
	m := testing.MainStart(testDeps{}, []testing.InternalTest{{
		Name: "mesh",
		F:    func(t *testing.T) { sum, err = RunT(t, spec, opt) },
	}}, nil, nil, nil)
	if !flag.Parsed() {
		flag.CommandLine.Parse(nil) // the runner must not read tokenrouter's own arguments
	}
	stdout := os.Stdout
	if null, nerr := os.OpenFile(os.DevNull, os.O_WRONLY, 0); nerr == nil {
		os.Stdout = null
		defer null.Close()
	}
	m.Run()
	os.Stdout = stdout
	return sum, err
}

// RunT runs spec inside synctest.Test(t, ...): on virtual time, with
// every host, goroutine and timer of the run in one bubble.
func RunT(t *testing.T, spec *Spec, opt Options) (*simulations.Summary, error) {
	log := opt.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	routeLibp2pLogs(log)
	wall := time.Now()
	var elapsed atomic.Int64
	done := make(chan struct{})
	defer close(done)
	if opt.Progress != nil {
		go report(done, &elapsed, spec.Length(), opt.Progress)
	}
	var out *outcome
	var err error = ErrNotFinished
	synctest.Test(t, func(t *testing.T) {
		out, err = simulate(t.Context(), spec, opt.Seed, log, &elapsed)
	})
	if err != nil {
		return nil, err
	}
	if t.Failed() {
		return nil, ErrNotFinished
	}
	return summarize(spec, opt.Seed, out, time.Since(wall)), nil
}

// report passes the virtual time reached to progress, ten times a second
// of real time, from outside the bubble.
func report(done <-chan struct{}, elapsed *atomic.Int64, total time.Duration, progress func(done, total int64)) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			progress(elapsed.Load()/int64(time.Millisecond), total.Milliseconds())
		}
	}
}

func summarize(spec *Spec, seed uint64, out *outcome, wall time.Duration) *simulations.Summary {
	s := &simulations.Summary{
		Scenario:     spec.Name,
		Question:     spec.Question,
		Seed:         seed,
		Nodes:        spec.Hosts,
		Gateways:     spec.Gateways,
		Requests:     out.published,
		SimSeconds:   spec.Length().Seconds(),
		WallSeconds:  wall.Seconds(),
		PeakRSSBytes: simulations.PeakRSS(),
		Metrics:      out.metrics,
		Targets:      map[string]simulations.Target{},
		Groups:       []simulations.GroupStats{},
	}
	keys := make([]string, 0, len(spec.Targets))
	for k := range spec.Targets {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		name := strings.TrimPrefix(k, "metrics.")
		v, ok := out.metrics[name]
		want := spec.Targets[k]
		s.Targets[name] = simulations.Target{Want: want, Value: v, Met: ok && simulations.Met(want, v)}
	}
	return s
}

// Describe is a one-line account of a run for a terminal.
func Describe(s *simulations.Summary) string {
	return fmt.Sprintf("%s (seed %d): %d hosts, %d announcements measured, %.0f virtual seconds in %.1f s; peak RSS %d MiB",
		s.Scenario, s.Seed, s.Nodes, s.Requests, s.SimSeconds, s.WallSeconds, s.PeakRSSBytes>>20)
}
