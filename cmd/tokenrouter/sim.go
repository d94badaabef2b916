package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/tokenrouter/tokenrouter/simulations"
)

func newSimCmd(g *globals) *cobra.Command {
	var (
		scenario, out, sweep string
		seed                 uint64
		sets                 []string
		short, list          bool
	)
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Run a deterministic network-scale simulation on the live routing and payout code",
		Long: `Run a discrete-event simulation of the network: nodes, gateways, consumers and
the settlement peer over simulated hours or days, routing with the live
gateway/route table and paying with the live settlement/economy code.

--scenario is a built-in scenario (--list shows them) or a scenario file; every
parameter is documented in the built-in files (simulations/scenarios/*.yaml).
--set path=value overrides any parameter (consumers.rate=8, nodes.spoofer.count=5,
gateways.count=100); --sweep path=v1,v2,... runs once per value and writes one
table (sweep.csv, sweep.svg) with each run in its own folder.

--out gets summary.json (the same for the same seed and parameters but for
wall_seconds and peak_rss_bytes), CSV time series and SVG plots. A progress
bar shows on a terminal.`,
		Example: `  tokenrouter sim --scenario fairness --seed 1 --out /tmp/fairness
  tokenrouter sim --scenario herd --seed 1 --out /tmp/herd --set gateways.count=10
  tokenrouter sim --scenario sybil --seed 1 --out /tmp/sybil --sweep nodes.spoofer.identity.every=1d,3d,7d`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			if list {
				for _, n := range simulations.Names() {
					sc, err := simulations.Load(n, false, nil)
					if err != nil {
						return err
					}
					fmt.Fprintf(w, "%-12s %s\n", n, sc.Question)
				}
				return listMesh(w)
			}
			if scenario == "" || out == "" {
				return fmt.Errorf("--scenario and --out are required (built-in scenarios: %s)", strings.Join(append(simulations.Names(), simulations.NamesOf(simulations.EngineMesh)...), ", "))
			}
			if engine, err := simulations.EngineOf(scenario); err == nil && engine == simulations.EngineMesh {
				if sweep != "" {
					return fmt.Errorf("--sweep: %s runs real libp2p hosts; run it once per value with --set", scenario)
				}
				return runMesh(g, cmd.ErrOrStderr(), w, scenario, short, sets, seed, out)
			}
			if sweep == "" {
				return runSim(cmd.ErrOrStderr(), w, scenario, short, sets, seed, out)
			}
			path, values, err := simulations.ParseSweep(sweep)
			if err != nil {
				return err
			}
			var points []simulations.SweepPoint
			var metrics []string
			var sc *simulations.Scenario
			for _, v := range values {
				dir := filepath.Join(out, sanitize(path+"="+v))
				s, err := simulations.Load(scenario, short, append(append([]string{}, sets...), path+"="+v))
				if err != nil {
					return err
				}
				sc = s
				sum, _, err := simAndWrite(cmd.ErrOrStderr(), s, seed, dir, append(append([]string{}, sets...), path+"="+v))
				if err != nil {
					return err
				}
				points = append(points, simulations.SweepPoint{Value: v, Summary: sum})
				metrics = simulations.SweepMetrics(sc, sum)
				fmt.Fprintf(w, "%s=%s: %s\n", path, v, brief(sum, metrics))
			}
			if err := simulations.WriteSweep(out, path, metrics, points); err != nil {
				return err
			}
			fmt.Fprintf(w, "sweep of %s over %d values written to %s (sweep.csv, sweep.svg)\n", path, len(values), out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&scenario, "scenario", "", "built-in scenario name or a scenario file (YAML)")
	f.Uint64Var(&seed, "seed", 1, "random seed: the same seed and parameters give the same summary")
	f.StringVar(&out, "out", "", "directory for summary.json, CSV time series and SVG plots")
	f.StringArrayVar(&sets, "set", nil, "override a parameter: path=value (repeatable)")
	f.StringVar(&sweep, "sweep", "", "run once per value: path=v1,v2,...; writes sweep.csv and sweep.svg")
	f.BoolVar(&short, "short", false, "run the scenario's short form (what CI runs)")
	f.BoolVar(&list, "list", false, "list the built-in scenarios and exit")
	return cmd
}

func runSim(errw, w io.Writer, scenario string, short bool, sets []string, seed uint64, out string) error {
	sc, err := simulations.Load(scenario, short, sets)
	if err != nil {
		return err
	}
	sum, _, err := simAndWrite(errw, sc, seed, out, sets)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%s (seed %d): %d nodes, %d requests, %.1f simulated hours in %.2f s; peak RSS %d MiB\n",
		sum.Scenario, sum.Seed, sum.Nodes, sum.Requests, sum.SimSeconds/3600, sum.WallSeconds, sum.PeakRSSBytes>>20)
	printTargets(w, sum.Targets, out)
	return nil
}

// printTargets lists each target of a run, met or missed, and where the
// run was written.
func printTargets(w io.Writer, targets map[string]simulations.Target, out string) {
	keys := make([]string, 0, len(targets))
	for k := range targets {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	missed := 0
	for _, k := range keys {
		t := targets[k]
		mark := "met"
		if !t.Met {
			mark, missed = "MISSED", missed+1
		}
		fmt.Fprintf(w, "  %-34s %-12g target %-10s %s\n", k, t.Value, t.Want, mark)
	}
	if missed > 0 {
		fmt.Fprintf(w, "  %d target(s) missed: a finding, not an error (see docs/simulations.md)\n", missed)
	}
	fmt.Fprintf(w, "written to %s\n", out)
}

func simAndWrite(errw io.Writer, sc *simulations.Scenario, seed uint64, out string, sets []string) (*simulations.Summary, []simulations.Series, error) {
	bar := simulations.NewProgress(errw, 1000, "sim "+sc.Name)
	sum, series, err := simulations.Run(sc, simulations.Options{Seed: seed, Progress: func(done, total int64) {
		bar.Set(done * 1000 / max(total, 1))
	}})
	bar.Finish()
	if err != nil {
		return nil, nil, err
	}
	sum.Params = sets
	if err := simulations.WriteAll(out, series); err != nil {
		return nil, nil, err
	}
	if err := simulations.WriteSummary(out, sum); err != nil {
		return nil, nil, err
	}
	return sum, series, nil
}

func brief(s *simulations.Summary, metrics []string) string {
	var parts []string
	for _, m := range metrics {
		parts = append(parts, fmt.Sprintf("%s=%g", m, s.Metrics[m]))
	}
	return strings.Join(parts, " ")
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == os.PathSeparator || r == ' ' {
			return '_'
		}
		return r
	}, s)
}
