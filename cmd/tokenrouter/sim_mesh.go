package main

import (
	"fmt"
	"io"

	"github.com/tokenrouter/tokenrouter/simulations"
	"github.com/tokenrouter/tokenrouter/simulations/mesh"
)

// listMesh lists the built-in scenarios that run real libp2p hosts.
func listMesh(w io.Writer) error {
	for _, n := range simulations.NamesOf(simulations.EngineMesh) {
		spec, err := mesh.Load(n, false, nil)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%-12s %s\n", n, spec.Question)
	}
	return nil
}

// runMesh runs a mesh scenario (simulations/mesh: real libp2p hosts on a
// simulated network, on virtual time) and writes its summary.json.
// Its phases and go-libp2p's warnings are logged at --log-level.
func runMesh(g *globals, errw, w io.Writer, scenario string, short bool, sets []string, seed uint64, out string) error {
	spec, err := mesh.Load(scenario, short, sets)
	if err != nil {
		return err
	}
	log, err := g.logger()
	if err != nil {
		return err
	}
	bar := simulations.NewProgress(errw, 1000, "sim "+spec.Name)
	sum, err := mesh.Run(spec, mesh.Options{Seed: seed, Log: log, Progress: func(done, total int64) {
		bar.Set(done * 1000 / max(total, 1))
	}})
	bar.Finish()
	if err != nil {
		return err
	}
	sum.Params = sets
	if err := simulations.WriteSummary(out, sum); err != nil {
		return err
	}
	fmt.Fprintln(w, mesh.Describe(sum))
	printTargets(w, sum.Targets, out)
	return nil
}
