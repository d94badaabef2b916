// Package route is the gateway's routing policy as pure code (SPEC §4). It
// reads no clock, does no I/O and draws randomness only from the source it
// is given, so the live gateway and the simulator run the very same code.
//
// A Table holds the instances of one model. The caller feeds it what it
// learns — gossiped load (SetLoad), health scores (SetHealth), the outcome of
// every call (Release) and the generation rate it measured on streams it
// relayed (ObserveRate) — and asks it to Pick. The rules:
//
//  1. Candidates: live instances of the model (those in the table).
//  2. Floor: an instance whose measured rate is under FloorTokPerSec is not a
//     candidate until FloorRetry has passed; then it is measured afresh.
//     Above the floor every rate is equal.
//  3. Breaker: FailuresToPark failures within FailureWindow park an instance
//     for ParkFor; then exactly one probe call is let through: success
//     readmits it, failure parks it again. Neutral outcomes (the consumer's
//     own 4xx, a client that left) never count; Full (a node's 429) means no
//     spare capacity, not a failure.
//  4. Least-loaded: spare = 1 - (gossiped in-flight + this gateway's
//     in-flight) / effective capacity; the most spare wins.
//  5. Ties: every candidate within TieBand of the best spare is drawn at
//     random, weighted by health, so equally idle instances share traffic
//     and list order never matters.
//
// Pick is O(1) in the number of instances: candidates sit in buckets by
// spare capacity (Levels of them), a bitset finds the best bucket, bucket
// weight sums choose a bucket in the band, and rejection sampling chooses a
// member by weight. Spare capacity is therefore compared at a resolution of
// 1/Levels.
package route
