// Package economy holds the pure money rules of Token-Router: the per-model
// price table, the cost of a call, and the provider/platform split.
//
// Every amount is an integer number of micro-credits (µcr; 1 credit =
// 1,000,000 µcr). Nothing here reads a clock, draws randomness or does I/O,
// except LoadPriceTable, which reads the price file the settlement peer is
// started with. The simulator and the live binary call the same functions.
//
// Rounding has named owners: Cost rounds up (a call that used any tokens is
// never free), and SplitCost gives the provider the floor of its share and
// the platform the remainder, so Provider+Platform == cost exactly.
package economy
