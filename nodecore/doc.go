// Package nodecore is the network's shared, pure model of a node: its
// rolling health window (14 days), its ramp-up (7 days), the throughput
// floor, and the clock those are measured against. Nothing here does I/O,
// reads the wall clock or draws global randomness: the settlement peer, the
// gateways and the simulator all call the same functions with the time and
// events they observed.
package nodecore
