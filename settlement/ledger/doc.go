// Package ledger is Token-Router's double-entry ledger, kept in Pebble.
//
// Every movement of money is a Transfer between two accounts, so the sum of
// all balances is always zero: the "mint" account goes negative by exactly
// what it has issued, and no other account may go below zero. Amounts are
// integer micro-credits (µcr).
//
// # Writes
//
// Writers are serialised by a mutex. Each write (Post, CreateAccount,
// NewAPIKey, RevokeAPIKey, LinkNode) builds ONE pebble batch holding every
// record it changes — transfers, index entries, account states, counters and
// the idempotency record — and commits it with pebble.Sync. A call returns only
// after the WAL fsync, so anything acknowledged survives a crash, and a crash
// leaves either the whole batch or none of it. The in-memory cache is updated
// only after the commit succeeds.
//
// # Reads
//
// Account states, API-key hashes and node links are loaded into memory at Open;
// Account, Balances, AccountByKey, NodeAccount and Nodes never touch disk.
// Transactions reads the transfer index from Pebble, ignoring any record whose
// commit has not yet returned (Pebble makes writes visible before their sync).
//
// # Key layout
//
// All keys are ASCII with a one-letter prefix; sequence numbers are 16-digit
// zero-padded lowercase hex so that byte order is numeric order.
//
//	a/<account>              account state (JSON: balance, earned, spent, calls, starting credit, created)
//	k/<sha256(api key) hex>  owning account id; the plaintext key is never stored
//	n/<peer id>              account the node is linked to
//	i/<idempotency key>      32-byte SHA-256 of the posting's payload, then the 8-byte big-endian
//	                         sequence number the posting's first transfer got
//	t/<seq>                  transfer record (JSON TxRecord)
//	x/<account>/<seq>        empty; per-account index of transfers touching <account>
//	m/seq                    8-byte big-endian next transfer sequence number
//
// Account ids never contain '/', so "x/<account>/" is a prefix of exactly one
// account's index.
package ledger
