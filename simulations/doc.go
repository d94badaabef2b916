// Package simulations is Token-Router's network simulator (SPEC §8): a
// deterministic discrete-event engine around the live pure core. Each
// simulated gateway routes with real gateway/route Tables, each instance
// ramps with nodecore.RampConfig and is scored by nodecore.HealthWindow,
// and each served call is priced and split by settlement/economy, so what
// a scenario shows is what the live binary does.
//
// A run is a pure function of the scenario and the seed:
//
//	sc, _ := simulations.Load("herd", false, []string{"gateways.count=10"})
//	sum, series, _ := simulations.Run(sc, simulations.Options{Seed: 1})
//	simulations.WriteSummary(dir, sum)
//	simulations.WriteAll(dir, series) // CSV and SVG
//
// Inside, world.run pops events off a heap ordered by (time, sequence):
// arrivals route through a gateway's picker and start a call on a node;
// call ends release the picker with their outcome, record health, and pay;
// announcements reach each gateway after its gossip delay; deaths leave the
// tables after dead_after; settlement publishes scores and bounties; and
// operators churn, take fresh identities or follow bounties on their own
// schedules. Randomness comes from seeded PCG streams, one per purpose and
// one per gateway; nothing reads the wall clock but wall_seconds.
package simulations
