package ledger

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

func TestOpenCreatesSystemAccounts(t *testing.T) {
	l := openLedger(t, vfs.NewMem(), "db")
	checkInvariants(t, l)
	for _, id := range []string{AccountMint, AccountPlatform, AccountBountyPool} {
		if st := mustAccount(t, l, id); st.Balance != 0 || st.ID != id {
			t.Fatalf("system account %q = %+v", id, st)
		}
	}
	if _, err := l.Account("acct_nope"); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("Account(unknown) err = %v", err)
	}
}

func TestCreateAccountMintsGrant(t *testing.T) {
	l := openLedger(t, nil, t.TempDir())
	st, key := mustCreate(t, l, economy.StartingCreditUcr)
	if !regexp.MustCompile(`^acct_[0-9a-f]{16}$`).MatchString(st.ID) {
		t.Fatalf("account id %q", st.ID)
	}
	if !regexp.MustCompile(`^trk_[a-z2-7]{52}$`).MatchString(key) {
		t.Fatalf("api key %q", key)
	}
	if st.Balance != economy.StartingCreditUcr || st.StartingCredit != economy.StartingCreditUcr ||
		st.Earned != 0 || st.Spent != 0 || st.Calls != 0 || !st.Created.Equal(fixedNow()) {
		t.Fatalf("new account = %+v", st)
	}
	if got := mustAccount(t, l, AccountMint).Balance; got != -economy.StartingCreditUcr {
		t.Fatalf("mint balance = %d", got)
	}
	st2, _ := mustCreate(t, l, 7)
	if got := mustAccount(t, l, AccountMint).Balance; got != -economy.StartingCreditUcr-7 {
		t.Fatalf("mint balance = %d", got)
	}
	if st2.ID == st.ID {
		t.Fatal("duplicate account id")
	}
	if acct, err := l.AccountByKey(key); err != nil || acct != st.ID {
		t.Fatalf("AccountByKey = %q, %v", acct, err)
	}
	txs, next, err := l.Transactions(st.ID, "", 10)
	if err != nil || next != "" || len(txs) != 1 {
		t.Fatalf("Transactions = %+v, %q, %v", txs, next, err)
	}
	want := TxRecord{Seq: 1, ID: "grant:" + st.ID + "/grant", Key: "grant:" + st.ID, From: AccountMint, To: st.ID,
		Amount: economy.StartingCreditUcr, Kind: KindGrant, Time: fixedNow()}
	if txs[0] != want {
		t.Fatalf("grant record = %+v, want %+v", txs[0], want)
	}

	zero, _ := mustCreate(t, l, 0)
	if zero.Balance != 0 {
		t.Fatalf("zero grant balance %d", zero.Balance)
	}
	if txs, _, _ := l.Transactions(zero.ID, "", 0); len(txs) != 0 {
		t.Fatalf("zero grant recorded transfers %+v", txs)
	}
	if _, _, err := l.CreateAccount(-1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative grant err = %v", err)
	}
	checkInvariants(t, l)
}

func TestPostSplitAndCounters(t *testing.T) {
	l := openLedger(t, vfs.NewMem(), "db")
	consumer, _ := mustCreate(t, l, economy.StartingCreditUcr)
	owner, _ := mustCreate(t, l, economy.StartingCreditUcr)
	if err := l.LinkNode("12D3KooWnode", owner.ID); err != nil {
		t.Fatal(err)
	}

	cost := economy.Cost(economy.DefaultPriceTable().Default, 1234, 567) // 1234 + 1134 = 2368 µcr
	split := economy.SplitCost(cost, economy.DefaultProviderBps)
	if cost != 2368 || split.Provider != 1894 || split.Platform != 474 {
		t.Fatalf("cost %d split %+v", cost, split)
	}
	if !mustPost(t, l, callPosting("req-1", consumer.ID, owner.ID, split.Provider, split.Platform)) {
		t.Fatal("not applied")
	}

	c, o := mustAccount(t, l, consumer.ID), mustAccount(t, l, owner.ID)
	if c.Balance != economy.StartingCreditUcr-cost || c.Spent != cost || c.Calls != 1 || c.Earned != 0 {
		t.Fatalf("consumer = %+v", c)
	}
	if o.Balance != economy.StartingCreditUcr+split.Provider || o.Earned != split.Provider || o.Spent != 0 || o.Calls != 0 {
		t.Fatalf("provider owner = %+v", o)
	}
	p := mustAccount(t, l, AccountPlatform)
	if p.Balance != split.Platform || p.Earned != 0 {
		t.Fatalf("platform = %+v", p)
	}

	// A bounty from the platform's share raises the provider's earnings, not
	// the consumer's spending.
	mustPost(t, l, Posting{Key: "bounty-1", Transfers: []Transfer{
		{From: AccountPlatform, To: owner.ID, Amount: 100, Kind: KindBounty},
	}})
	if o := mustAccount(t, l, owner.ID); o.Earned != split.Provider+100 || o.Balance != economy.StartingCreditUcr+split.Provider+100 {
		t.Fatalf("owner after bounty = %+v", o)
	}
	if c2 := mustAccount(t, l, consumer.ID); c2 != c {
		t.Fatalf("consumer changed by bounty: %+v", c2)
	}

	// An unlinked provider gets a node: account on the fly; zero-amount
	// transfers are omitted.
	mustPost(t, l, Posting{Key: "req-2", Consumer: consumer.ID, Transfers: []Transfer{
		{From: consumer.ID, To: "node:12D3KooWfree", Amount: 8, Kind: KindCall},
		{From: consumer.ID, To: AccountPlatform, Amount: 0, Kind: KindCall},
	}})
	n := mustAccount(t, l, "node:12D3KooWfree")
	if n.Balance != 8 || n.Earned != 8 || !n.Created.Equal(fixedNow()) {
		t.Fatalf("node account = %+v", n)
	}
	if c := mustAccount(t, l, consumer.ID); c.Calls != 2 || c.Spent != cost+8 {
		t.Fatalf("consumer = %+v", c)
	}
	txs, _, err := l.Transactions(consumer.ID, "", 10)
	if err != nil || len(txs) != 4 { // grant + 2 for req-1 + 1 for req-2
		t.Fatalf("consumer transactions = %+v, %v", txs, err)
	}
	if txs[0].Key != "req-2" || txs[0].To != "node:12D3KooWfree" || txs[3].Kind != KindGrant {
		t.Fatalf("transactions order = %+v", txs)
	}
}

func TestPostValidation(t *testing.T) {
	l := openLedger(t, vfs.NewMem(), "db")
	a, _ := mustCreate(t, l, 1000)
	before, _ := l.Balances()
	tests := []struct {
		name string
		p    Posting
		want error
	}{
		{"empty key", Posting{Transfers: []Transfer{{a.ID, AccountPlatform, 1, KindCall, ""}}}, ErrInvalid},
		{"negative amount", Posting{Key: "k", Transfers: []Transfer{{a.ID, AccountPlatform, -1, KindCall, ""}}}, ErrInvalid},
		{"self transfer", Posting{Key: "k", Transfers: []Transfer{{a.ID, a.ID, 1, KindCall, ""}}}, ErrInvalid},
		{"empty kind", Posting{Key: "k", Transfers: []Transfer{{a.ID, AccountPlatform, 1, "", ""}}}, ErrInvalid},
		{"unknown from", Posting{Key: "k", Transfers: []Transfer{{"acct_0000000000000000", AccountPlatform, 1, KindCall, ""}}}, ErrUnknownAccount},
		{"unknown to", Posting{Key: "k", Transfers: []Transfer{{a.ID, "acct_0000000000000000", 1, KindCall, ""}}}, ErrUnknownAccount},
		{"unknown consumer", Posting{Key: "k", Consumer: "acct_x", Transfers: []Transfer{{a.ID, AccountPlatform, 1, KindCall, ""}}}, ErrUnknownAccount},
		{"bare node prefix", Posting{Key: "k", Transfers: []Transfer{{a.ID, "node:", 1, KindCall, ""}}}, ErrUnknownAccount},
		{"node id with slash", Posting{Key: "k", Transfers: []Transfer{{a.ID, "node:a/b", 1, KindCall, ""}}}, ErrUnknownAccount},
		{"unfunded node", Posting{Key: "k", Transfers: []Transfer{{"node:poor", a.ID, 1, KindCall, ""}}}, ErrInsufficientFunds},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if applied, err := l.Post(tt.p); !errors.Is(err, tt.want) || applied {
				t.Fatalf("Post = %v, %v; want %v", applied, err, tt.want)
			}
			checkInvariants(t, l)
			if after, _ := l.Balances(); !reflect.DeepEqual(after, before) {
				t.Fatalf("balances changed: %v -> %v", before, after)
			}
		})
	}
	// None of the failures recorded key "k".
	if !mustPost(t, l, Posting{Key: "k", Payload: []byte("x")}) {
		t.Fatal("key k was recorded by a failed posting")
	}
}

func TestIdempotency(t *testing.T) {
	fs := vfs.NewMem()
	l := openLedger(t, fs, "db")
	c, _ := mustCreate(t, l, 1000)
	p := callPosting("req-1", c.ID, "node:p", 80, 20)

	if !mustPost(t, l, p) {
		t.Fatal("first post not applied")
	}
	if mustPost(t, l, p) {
		t.Fatal("second post applied")
	}
	q := p
	q.Payload = []byte("something else")
	if applied, err := l.Post(q); !errors.Is(err, ErrConflict) || applied {
		t.Fatalf("conflicting post = %v, %v", applied, err)
	}
	checkOnce := func(l *Ledger) {
		t.Helper()
		if st := mustAccount(t, l, c.ID); st.Balance != 900 || st.Calls != 1 || st.Spent != 100 {
			t.Fatalf("consumer = %+v", st)
		}
		if txs, _, _ := l.Transactions(c.ID, "", 0); len(txs) != 3 {
			t.Fatalf("transactions = %+v", txs)
		}
	}
	checkOnce(l)

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Post(p); !errors.Is(err, ErrClosed) {
		t.Fatalf("Post after Close err = %v", err)
	}
	l = openLedger(t, fs, "db")
	checkInvariants(t, l)
	if mustPost(t, l, p) {
		t.Fatal("post after reopen applied")
	}
	if _, err := l.Post(q); !errors.Is(err, ErrConflict) {
		t.Fatalf("conflicting post after reopen err = %v", err)
	}
	checkOnce(l)
}

func TestInsufficientFunds(t *testing.T) {
	l := openLedger(t, vfs.NewMem(), "db")
	c, _ := mustCreate(t, l, 100)
	funder, _ := mustCreate(t, l, 1000)
	before, _ := l.Balances()

	// The first transfer fits, the second does not: neither applies.
	p := callPosting("req-1", c.ID, "node:p", 80, 21)
	if applied, err := l.Post(p); !errors.Is(err, ErrInsufficientFunds) || applied {
		t.Fatalf("Post = %v, %v", applied, err)
	}
	checkInvariants(t, l)
	if after, _ := l.Balances(); !reflect.DeepEqual(after, before) {
		t.Fatalf("balances changed: %v -> %v", before, after)
	}
	if st := mustAccount(t, l, c.ID); st.Calls != 0 || st.Spent != 0 {
		t.Fatalf("counters changed: %+v", st)
	}
	if _, err := l.Account("node:p"); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("node account created by failed posting: %v", err)
	}
	if txs, _, _ := l.Transactions(c.ID, "", 0); len(txs) != 1 {
		t.Fatalf("transactions = %+v", txs)
	}

	// Transfers apply in order: money received earlier in the posting can be
	// spent later in it.
	mustPost(t, l, Posting{Key: "top-up", Transfers: []Transfer{
		{From: funder.ID, To: c.ID, Amount: 1, Kind: "topup"},
	}})
	if !mustPost(t, l, p) {
		t.Fatal("retry after top-up not applied")
	}
	if st := mustAccount(t, l, c.ID); st.Balance != 0 || st.Calls != 1 {
		t.Fatalf("consumer = %+v", st)
	}
	// Only mint may go negative.
	if _, err := l.Post(Posting{Key: "drain", Transfers: []Transfer{{From: AccountPlatform, To: c.ID, Amount: 22, Kind: "x"}}}); !errors.Is(err, ErrInsufficientFunds) {
		t.Fatalf("platform overdraft err = %v", err)
	}
	mustPost(t, l, Posting{Key: "mint-more", Transfers: []Transfer{{From: AccountMint, To: AccountBountyPool, Amount: 1 << 40, Kind: "fund"}}})
}

func TestAPIKeys(t *testing.T) {
	fs := vfs.NewMem()
	l := openLedger(t, fs, "db")
	a, k1 := mustCreate(t, l, 10)
	b, _ := mustCreate(t, l, 10)
	k2, info2, err := l.NewAPIKey(a.ID, "laptop <b>", ScopeAccount)
	if err != nil {
		t.Fatal(err)
	}
	if info2.Name != "laptop <b>" || info2.Prefix != k2[:8]+"…"+k2[len(k2)-4:] || info2.ID != keyID(hashKey(k2)) {
		t.Fatalf("key info = %+v", info2)
	}
	if _, _, err := l.NewAPIKey(a.ID, strings.Repeat("x", MaxKeyName+1), ScopeAccount); !errors.Is(err, ErrInvalid) {
		t.Fatalf("NewAPIKey(long name) err = %v", err)
	}
	if keys := l.APIKeys(a.ID); len(keys) != 2 || !slices.Contains(keys, info2) {
		t.Fatalf("APIKeys = %+v", keys)
	}
	if keys := l.APIKeys(b.ID); len(keys) != 1 || keys[0].ID == info2.ID {
		t.Fatalf("APIKeys(b) = %+v", keys)
	}
	if k1 == k2 {
		t.Fatal("duplicate api key")
	}
	if _, _, err := l.NewAPIKey(a.ID, "x", "admin"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("NewAPIKey(bad scope) err = %v", err)
	}
	if _, _, err := l.NewAPIKey("acct_missing", "", ScopeAccount); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("NewAPIKey(unknown) err = %v", err)
	}
	for _, k := range []string{k1, k2} {
		if acct, err := l.AccountByKey(k); err != nil || acct != a.ID {
			t.Fatalf("AccountByKey = %q, %v", acct, err)
		}
	}
	assertNotStored(t, l, k1, k2)

	if _, err := l.AccountByKey("trk_nope"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown key err = %v", err)
	}
	if _, err := l.RevokeAPIKey(b.ID, k1); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("revoke by other account err = %v", err)
	}
	if _, err := l.RevokeAPIKey("acct_missing", k1); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("revoke by unknown account err = %v", err)
	}
	if hash, err := l.RevokeAPIKey(a.ID, k1); err != nil || hash != KeyHash(k1) {
		t.Fatal(hash, err)
	}
	if _, err := l.AccountByKey(k1); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("revoked key err = %v", err)
	}
	if _, err := l.RevokeAPIKey(a.ID, k1); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("double revoke err = %v", err)
	}
	if _, err := l.RevokeAPIKeyID(b.ID, info2.ID); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("revoke another account's key by id err = %v", err)
	}
	checkInvariants(t, l)

	// Revocation and the remaining key survive a reopen.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLedger(t, fs, "db")
	if _, err := l.AccountByKey(k1); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("revoked key after reopen err = %v", err)
	}
	if acct, err := l.AccountByKey(k2); err != nil || acct != a.ID {
		t.Fatalf("AccountByKey after reopen = %q, %v", acct, err)
	}
	if keys := l.APIKeys(a.ID); len(keys) != 1 || keys[0] != info2 {
		t.Fatalf("APIKeys after reopen = %+v", keys)
	}
	assertNotStored(t, l, k1, k2)
	// k2 is the account's last key of the account scope: it stays, even
	// with a node's key beside it.
	k3, info3, err := l.NewAPIKey(a.ID, "gpu box", ScopeNode)
	if err != nil || info3.Scope != ScopeNode {
		t.Fatal(info3, err)
	}
	if _, err := l.RevokeAPIKeyID(a.ID, info2.ID); !errors.Is(err, ErrInvalid) {
		t.Fatalf("revoking the last account key err = %v", err)
	}
	if hash, err := l.RevokeAPIKeyID(a.ID, info3.ID); err != nil || hash != KeyHash(k3) {
		t.Fatal(hash, err)
	}
	k4, _, _ := l.NewAPIKey(a.ID, "new", ScopeAccount)
	if hash, err := l.RevokeAPIKeyID(a.ID, info2.ID); err != nil || hash != KeyHash(k2) {
		t.Fatal(hash, err)
	}
	if _, err := l.AccountByKey(k2); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("key revoked by id err = %v", err)
	}
	// The key's record is the bare account, as before descriptions: a
	// ledger written now opens with the binary before them.
	v, closer, err := l.db.Get(apiKeyKey(KeyHash(k4)))
	if err != nil || string(v) != a.ID {
		t.Fatalf("k/ record = %q, %v", v, err)
	}
	closer.Close()
}

// A key stored before keys had descriptions (the account alone, no d/
// record) still works and lists as the account's default key.
func TestLegacyAPIKeyRecord(t *testing.T) {
	fs := vfs.NewMem()
	l := openLedger(t, fs, "db")
	a, _ := mustCreate(t, l, 10)
	legacy := "trk_legacykey0123456789"
	if err := l.db.Set(apiKeyKey(KeyHash(legacy)), []byte(a.ID), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLedger(t, fs, "db")
	if acct, err := l.AccountByKey(legacy); err != nil || acct != a.ID {
		t.Fatalf("legacy key = %q, %v", acct, err)
	}
	var found bool
	for _, k := range l.APIKeys(a.ID) {
		if k.ID == keyID(KeyHash(legacy)) {
			found = k.Name == "default" && k.Scope == ScopeAccount
		}
	}
	if !found {
		t.Fatalf("legacy key not listed right: %+v", l.APIKeys(a.ID))
	}
}

// assertNotStored scans every key and value in the store for the plaintext
// keys (whole, and their random part).
func assertNotStored(t *testing.T, l *Ledger, keys ...string) {
	t.Helper()
	it, err := l.db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	n := 0
	for it.First(); it.Valid(); it.Next() {
		n++
		for _, k := range keys {
			secret := []byte(strings.TrimPrefix(k, APIKeyPrefix))
			if bytes.Contains(it.Key(), secret) || bytes.Contains(it.Value(), secret) {
				t.Fatalf("plaintext api key found in record %q", it.Key())
			}
		}
	}
	if n == 0 {
		t.Fatal("store scan saw no records")
	}
}

func TestNodes(t *testing.T) {
	l := openLedger(t, vfs.NewMem(), "db")
	a, _ := mustCreate(t, l, 0)
	b, _ := mustCreate(t, l, 0)
	for _, peer := range []string{"peerB", "peerA"} {
		if err := l.LinkNode(peer, a.ID); err != nil {
			t.Fatal(err)
		}
	}
	if got := l.Nodes(a.ID); !reflect.DeepEqual(got, []string{"peerA", "peerB"}) {
		t.Fatalf("Nodes = %v", got)
	}
	if err := l.LinkNode("peerA", b.ID); err != nil {
		t.Fatal(err)
	}
	if acct, ok := l.NodeAccount("peerA"); !ok || acct != b.ID {
		t.Fatalf("NodeAccount = %q, %v", acct, ok)
	}
	if got := l.Nodes(a.ID); !reflect.DeepEqual(got, []string{"peerB"}) {
		t.Fatalf("Nodes after relink = %v", got)
	}
	if _, ok := l.NodeAccount("peerZ"); ok {
		t.Fatal("unknown node linked")
	}
	if err := l.LinkNode("peerC", "acct_missing"); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("link to unknown account err = %v", err)
	}
	if err := l.LinkNode("", a.ID); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty peer err = %v", err)
	}
	if got := l.Nodes("acct_missing"); len(got) != 0 {
		t.Fatalf("Nodes(unknown) = %v", got)
	}
}

func TestReopenRestoresState(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ledger")
	l := openLedger(t, nil, dir)
	c, key := mustCreate(t, l, 5000)
	o, _ := mustCreate(t, l, 0)
	if err := l.LinkNode("peer1", o.ID); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		mustPost(t, l, callPosting(fmt.Sprintf("req-%d", i), c.ID, o.ID, 80, 20))
	}
	mustPost(t, l, callPosting("req-node", c.ID, "node:unlinked", 8, 2))
	wantBal, _ := l.Balances()
	wantAcct := map[string]AccountState{}
	for id := range wantBal {
		wantAcct[id] = mustAccount(t, l, id)
	}
	wantTx, _, _ := l.Transactions(c.ID, "", 100)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = openLedger(t, nil, dir)
	checkInvariants(t, l)
	if got, _ := l.Balances(); !reflect.DeepEqual(got, wantBal) {
		t.Fatalf("balances after reopen = %v, want %v", got, wantBal)
	}
	for id, want := range wantAcct {
		if got := mustAccount(t, l, id); !reflect.DeepEqual(got, want) {
			t.Fatalf("account %q after reopen = %+v, want %+v", id, got, want)
		}
	}
	if got, _, _ := l.Transactions(c.ID, "", 100); !reflect.DeepEqual(got, wantTx) || len(got) != 13 {
		t.Fatalf("transactions after reopen = %d records, want %d", len(got), len(wantTx))
	}
	if acct, err := l.AccountByKey(key); err != nil || acct != c.ID {
		t.Fatalf("AccountByKey after reopen = %q, %v", acct, err)
	}
	if acct, ok := l.NodeAccount("peer1"); !ok || acct != o.ID {
		t.Fatalf("NodeAccount after reopen = %q, %v", acct, ok)
	}
	// Sequence numbers continue where they stopped.
	mustPost(t, l, callPosting("req-after", c.ID, o.ID, 1, 1))
	txs, _, _ := l.Transactions(c.ID, "", 1)
	if txs[0].Seq != wantTx[0].Seq+2 {
		t.Fatalf("seq after reopen = %d, last before = %d", txs[0].Seq, wantTx[0].Seq)
	}
}

func TestTransactionsPaging(t *testing.T) {
	l := openLedger(t, vfs.NewMem(), "db")
	c, _ := mustCreate(t, l, 1000)
	other, _ := mustCreate(t, l, 1000)
	for i := range 6 {
		mustPost(t, l, Posting{Key: fmt.Sprintf("r%d", i), Transfers: []Transfer{{c.ID, AccountPlatform, int64(i + 1), KindCall, ""}}})
		mustPost(t, l, Posting{Key: fmt.Sprintf("o%d", i), Transfers: []Transfer{{other.ID, AccountPlatform, 1, KindCall, ""}}})
	}
	var all []TxRecord
	cursor := ""
	for page := 0; ; page++ {
		txs, next, err := l.Transactions(c.ID, cursor, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(txs) > 3 || page > 5 {
			t.Fatalf("page %d has %d records", page, len(txs))
		}
		all = append(all, txs...)
		if next == "" {
			break
		}
		cursor = next
	}
	if len(all) != 7 { // grant + 6
		t.Fatalf("got %d records", len(all))
	}
	for i, r := range all {
		if r.From != c.ID && r.To != c.ID {
			t.Fatalf("record %+v does not touch %s", r, c.ID)
		}
		if i > 0 && r.Seq >= all[i-1].Seq {
			t.Fatalf("not newest first: %+v after %+v", r, all[i-1])
		}
	}
	if all[0].Amount != 6 || all[6].Kind != KindGrant {
		t.Fatalf("records = %+v", all)
	}
	if _, _, err := l.Transactions(c.ID, "zz", 3); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad cursor err = %v", err)
	}
	if _, _, err := l.Transactions("acct_missing", "", 3); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("unknown account err = %v", err)
	}
	// An exact final page reports no next cursor.
	if txs, next, _ := l.Transactions(c.ID, "", 7); len(txs) != 7 || next != "" {
		t.Fatalf("exact page: %d records, next %q", len(txs), next)
	}
}
