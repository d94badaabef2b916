// Package ledger is Token-Router's double-entry ledger, kept in Pebble.
//
// Every movement of money is a Transfer between two accounts, so the sum of
// all balances is always zero: the "mint" account goes negative by exactly
// what it has issued, and no other account may go below zero. Amounts are
// integer micro-credits (µcr). Each applied transfer has an ID, its
// posting's idempotency key + "/" + its leg ("provider", "platform", ...).
//
// # Holds
//
// A hold (Hold, ExtendHold, VoidHold, ExpireHolds) reserves part of an
// account's balance for a call in flight, like a TigerBeetle pending
// transfer: AccountState.Held is the sum of the open holds' Remaining, and
// nothing else may spend it (Available = Balance - Held). A posting naming
// the hold draws the consumer's debits from it first, then from Available.
// A posting against a voided or expired hold still settles, from Available.
//
// # Writes
//
// Every balance- or hold-changing write (PostBatch and Post, CreateAccount,
// the hold calls) builds ONE pebble batch holding every record it changes —
// posting records, index entries, hold records and events, account states,
// counters, idempotency records and a chain link — and commits it with
// pebble.Sync. PostBatch puts a whole batch of postings, each accepted or
// rejected on its own, into one such commit.
//
//	lock wmu
//	  apply to an overlay of the working state  (rejected postings roll back)
//	  encode records into the batch (binary), seal it with a chain link
//	  db.ApplyNoSyncWait(batch, Sync)           (ordered, readable, not yet durable)
//	  install into the working state
//	unlock wmu
//	batch.SyncWait()                            (the WAL fsync, shared with concurrent writers)
//	wait for the previous batch to publish; publish to readers
//
// A call returns only after its fsync, and after every batch before it is
// durable, so anything acknowledged (a replay included) survives a crash,
// and a crash leaves either the whole batch or none of it. If an fsync
// fails, the working state is ahead of the disk: the ledger refuses every
// later write until it is reopened. NewAPIKey, RevokeAPIKey and LinkNode
// write one synced record each.
//
// Every posting's idempotency key is checked first against an in-memory
// filter of all keys in the store (built at Open by scanning i/, fed before
// each batch is handed to Pebble); only a key the filter cannot rule out is
// looked up in Pebble, so new keys cost no disk or memtable search.
//
// # Reads
//
// Account states, open holds, API-key hashes and node links are loaded into
// memory at Open; Account, Balances, Holds, AccountByKey, NodeAccount and
// Nodes never touch disk. Readers see only published (durable) state.
// Transactions and HoldInfo (for closed holds) read Pebble, ignoring any
// record whose commit has not yet returned (Pebble makes writes visible
// before their sync).
//
// # Chain
//
// Every batch that moves money or changes holds appends a ChainLink: a
// SHA-256 digest of its transfers and hold events, chained to the previous
// link's hash and signed with Options.Signer. The digest of a version 2
// link (every link written since inclusion proofs) includes the RFC 6962
// Merkle root of the batch's transfers (see merkle.go), so Prove can show
// one call's transfers are in a signed batch with an audit path per
// transfer, and VerifyProof checks that with the settlement key alone.
// Prove finds the call's i/ record (under any gateway, one seek each), the
// link holding its first transfer (binary search over c/) and rebuilds the
// batch's tree from its t/ records. Verify re-checks a closed store: the
// chain and its signatures, every version 2 link's Merkle root, that the
// records are exactly those the links cover, and that every balance and
// Held matches its records. Version 1 links (older stores) still verify.
//
// # Key layout
//
// All keys are ASCII with a one-letter prefix; sequence numbers are 16-digit
// zero-padded lowercase hex so that byte order is numeric order. Values are
// binary (a version byte, then varints and length-prefixed strings; see
// codec.go) unless noted.
//
//	a/<account>              account state: id, balance, held, earned, spent, calls, starting credit, created
//	k/<sha256(api key) hex>  owning account id; the plaintext key is never stored
//	d/<sha256(api key) hex>  the key's description (APIKeyInfo as JSON: id, prefix, name, scope,
//	                         created); a key without one (made before descriptions) lists as "default"
//	n/<peer id>              account the node is linked to
//	i/<idempotency key>      32-byte SHA-256 of the posting's payload, then the 8-byte big-endian
//	                         sequence number the posting's first transfer got (its t/ record's key)
//	t/<seq>                  posting record, keyed by the seq of its posting's first transfer:
//	                         time and key once, then per transfer leg, from, to, amount, kind
//	                         (accounts and kinds repeated within the posting are references to
//	                         their first occurrence); its transfers are <seq>, <seq>+1, ...
//	x/<account>/<seq>        per-account index of transfers touching <account>: one record per
//	                         account per batch, keyed by the account's first transfer of the batch;
//	                         the value lists its others as uvarint increments (empty: just <seq>)
//	h/<hold id>              hold: account, holder, amount, remaining, expires, closed, last event seq
//	e/<seq>                  hold event: seq, time, kind, hold, account, holder, delta, closed, expires
//	c/<seq>                  chain link: version, seq, prev, hash, digest, (version 2:) Merkle root
//	                         and hold-event digest, tx and event ranges, time, signature
//	m/seq                    8-byte big-endian next transfer sequence number
//	m/eseq                   8-byte big-endian next hold event sequence number
//
// Account ids never contain '/', so "x/<account>/" is a prefix of exactly one
// account's index. t/ records of earlier versions hold one transfer each
// (a binary record with its own seq), and account and transfer records may
// be JSON; all of these are still read, and the chain digest is the same
// for both t/ forms (one entry per transfer), so older stores verify.
package ledger
