package ledger

import (
	"reflect"
	"testing"
)

// TestPostingRecordCodec round-trips a posting record and rejects damaged
// ones.
func TestPostingRecordCodec(t *testing.T) {
	txs := []txEntry{
		{leg: "provider", from: "acct_a", to: "node:p", kind: KindCall, amount: 80},
		{leg: "platform", from: "acct_a", to: AccountPlatform, kind: KindCall, amount: 20},
		{leg: "bounty", from: AccountPlatform, to: "node:p", kind: KindBounty, amount: 5},
		{leg: "3", from: "", to: "acct_a", kind: "x", amount: 1 << 50},
	}
	v, strs := appendPosting(nil, 1234567890, "req-1", txs, nil)
	if len(strs) != 7 {
		t.Fatalf("string table %q", strs)
	}
	var rec postingRec
	if err := decodePosting(42, v, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.first != 42 || rec.time != 1234567890 || rec.key != "req-1" || !reflect.DeepEqual(rec.txs, txs) {
		t.Fatalf("decoded %+v", rec)
	}
	if got := rec.tx(44); got.ID != "req-1/bounty" || got.Seq != 44 || got.From != AccountPlatform || got.Amount != 5 {
		t.Fatalf("tx(44) = %+v", got)
	}
	if rec.covers(41) || !rec.covers(45) || rec.covers(46) {
		t.Fatal("covers")
	}
	for n := range len(v) {
		if err := decodePosting(42, v[:n], &rec); err == nil {
			t.Fatalf("truncated to %d bytes: decoded", n)
		}
	}
	if err := decodePosting(42, append(v[:len(v):len(v)], 0), &rec); err == nil {
		t.Fatal("trailing byte: decoded")
	}
	// A reference past the table.
	bad, _ := appendPosting(nil, 1, "k", txs[:2], nil)
	bad[len(bad)-1] = 9 // the second kind: reference 9 of 4
	if err := decodePosting(1, bad, &rec); err == nil {
		t.Fatal("bad reference: decoded")
	}
}
