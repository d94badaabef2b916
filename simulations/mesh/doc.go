// Package mesh runs Token-Router's p2p layer at network scale (SPEC §8,
// `tokenrouter sim --scenario mesh-1000`): hundreds to thousands of real
// libp2p hosts in one process, each with QUIC, identify, GossipSub with
// the live scoring and announcement validator, and the live membership
// layer (p2p.StartMembership), on go-libp2p's simulated network
// (marcopolo/simnet, as x/simlibp2p uses it) under testing/synctest's
// virtual time. A slow or busy machine therefore does not make the network
// look slow: every figure is in virtual time.
//
//	spec, _ := mesh.Load("mesh-1000", false, []string{"topics=per-model"})
//	sum, _ := mesh.Run(spec, mesh.Options{Seed: 1}) // or mesh.RunT(t, ...) in a test
//	simulations.WriteSummary(dir, sum)
//
// A run (simulate) builds the hosts with identities drawn from the seed
// (roles, topology, schedules and victims too), lets them dial in over
// join_over (every bootstrap peer first, then peers_per_host random others,
// then the membership join, as the live p2p.Host does) and settle until
// warmup ends. Over the window every node publishes a changed
// p2p.Announcement every announce_every, gateways record when each reaches
// them, and every host's libp2p bandwidth reporter and simulated UDP
// endpoint count bytes. Then kill nodes are cut off without a goodbye and
// each gateway's membership reports are timed until drain ends.
//
// testing/synctest needs a *testing.T: a test calls RunT; a program calls
// Run, which starts the testing package's runner (testing.MainStart) on a
// single test. Virtual time stops when the bubble's root goroutine ends,
// so the run waits for every host, membership and timer to finish first.
package mesh
