package ledger

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

func mustHold(t *testing.T, l *Ledger, id, account string, amount int64, expires time.Time) HoldState {
	t.Helper()
	h, err := l.Hold(id, account, "gw-1", amount, expires)
	if err != nil {
		t.Fatalf("Hold(%q, %d): %v", id, amount, err)
	}
	checkInvariants(t, l)
	return h
}

func TestTransferIDs(t *testing.T) {
	l := openLedger(t, vfs.NewMem(), "db")
	c, _ := mustCreate(t, l, 1000)
	p := callPosting("call/r1", c.ID, "node:p", 80, 20)
	p.Transfers[0].Leg, p.Transfers[1].Leg = "provider", "platform"
	mustPost(t, l, p)
	mustPost(t, l, callPosting("call/r2", c.ID, "node:p", 8, 2))
	txs, _, err := l.Transactions(c.ID, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range txs {
		ids = append(ids, r.ID)
	}
	want := []string{"call/r2/1", "call/r2/0", "call/r1/platform", "call/r1/provider", "grant:" + c.ID + "/grant"}
	if !reflect.DeepEqual(ids, want) {
		t.Fatalf("ids = %q, want %q", ids, want)
	}
	if txs[2].Key != "call/r1" {
		t.Fatalf("ref = %q", txs[2].Key)
	}

	bad := []struct {
		name string
		legs [2]string
	}{
		{"same leg", [2]string{"provider", "provider"}},
		{"leg equals an index", [2]string{"", "0"}},
		{"leg with slash", [2]string{"a/b", "c"}},
	}
	for _, tt := range bad {
		p := callPosting("call/bad", c.ID, "node:p", 1, 1)
		p.Transfers[0].Leg, p.Transfers[1].Leg = tt.legs[0], tt.legs[1]
		if ok, err := l.Post(p); !errors.Is(err, ErrInvalid) || ok {
			t.Fatalf("%s: Post = %v, %v", tt.name, ok, err)
		}
	}
	checkInvariants(t, l)
}

func TestHoldLifecycle(t *testing.T) {
	fs := vfs.NewMem()
	l := openLedger(t, fs, "db")
	c, _ := mustCreate(t, l, 1000)
	other, _ := mustCreate(t, l, 1000)
	exp := fixedNow().Add(time.Minute)

	h := mustHold(t, l, "h1", c.ID, 600, exp)
	want := HoldState{ID: "h1", Account: c.ID, Holder: "gw-1", Amount: 600, Remaining: 600, Expires: exp}
	if h != want {
		t.Fatalf("Hold = %+v, want %+v", h, want)
	}
	if st := mustAccount(t, l, c.ID); st.Balance != 1000 || st.Held != 600 || st.Available() != 400 {
		t.Fatalf("account after hold = %+v", st)
	}
	// Idempotent by id; another account or holder conflicts.
	if again, err := l.Hold("h1", c.ID, "gw-1", 999, exp.Add(time.Hour)); err != nil || again != want {
		t.Fatalf("repeat Hold = %+v, %v", again, err)
	}
	if _, err := l.Hold("h1", other.ID, "gw-1", 1, exp); !errors.Is(err, ErrConflict) {
		t.Fatalf("Hold on another account err = %v", err)
	}
	if _, err := l.Hold("h1", c.ID, "gw-2", 1, exp); !errors.Is(err, ErrConflict) {
		t.Fatalf("Hold by another holder err = %v", err)
	}
	for name, err := range map[string]error{
		"over available": errOf(l.Hold("h2", c.ID, "gw-1", 401, exp)),
		"zero amount":    errOf(l.Hold("h2", c.ID, "gw-1", 0, exp)),
		"empty id":       errOf(l.Hold("", c.ID, "gw-1", 1, exp)),
		"system":         errOf(l.Hold("h2", AccountPlatform, "gw-1", 1, exp)),
		"mint":           errOf(l.Hold("h2", AccountMint, "gw-1", 1, exp)),
		"no expiry":      errOf(l.Hold("h2", c.ID, "gw-1", 1, time.Time{})),
		"unknown":        errOf(l.Hold("h2", "acct_missing", "gw-1", 1, exp)),
	} {
		wantErr := ErrInvalid
		switch name {
		case "over available":
			wantErr = ErrInsufficientFunds
		case "unknown":
			wantErr = ErrUnknownAccount
		}
		if !errors.Is(err, wantErr) {
			t.Fatalf("%s: err = %v, want %v", name, err, wantErr)
		}
	}
	if _, ok := l.HoldInfo("h2"); ok {
		t.Fatal("failed hold recorded")
	}
	// Held money cannot be spent by a posting that does not name the hold.
	if _, err := l.Post(callPosting("r-nohold", c.ID, "node:p", 400, 1)); !errors.Is(err, ErrInsufficientFunds) {
		t.Fatalf("spend of held money err = %v", err)
	}
	checkInvariants(t, l)

	// Extend: more money, later expiry; an earlier expiry is ignored.
	h, err := l.ExtendHold("h1", 100, exp.Add(time.Minute))
	if err != nil || h.Amount != 700 || h.Remaining != 700 || !h.Expires.Equal(exp.Add(time.Minute)) {
		t.Fatalf("ExtendHold = %+v, %v", h, err)
	}
	h, err = l.ExtendHold("h1", 0, exp)
	if err != nil || !h.Expires.Equal(exp.Add(time.Minute)) || h.Amount != 700 {
		t.Fatalf("ExtendHold earlier = %+v, %v", h, err)
	}
	if _, err := l.ExtendHold("h1", 301, exp); !errors.Is(err, ErrInsufficientFunds) {
		t.Fatalf("ExtendHold over available err = %v", err)
	}
	if _, err := l.ExtendHold("nope", 1, exp); !errors.Is(err, ErrUnknownHold) {
		t.Fatalf("ExtendHold unknown err = %v", err)
	}
	if _, err := l.ExtendHold("h1", -1, exp); !errors.Is(err, ErrInvalid) {
		t.Fatalf("ExtendHold negative err = %v", err)
	}
	checkInvariants(t, l)
	mustHold(t, l, "h3", c.ID, 50, exp)
	if hs := l.Holds(c.ID); len(hs) != 2 || hs[0].ID != "h1" || hs[1].ID != "h3" {
		t.Fatalf("Holds = %+v", hs)
	}

	// Void releases the rest; voiding again changes nothing.
	v, err := l.VoidHold("h1")
	if err != nil || !v.Closed || v.Remaining != 0 || v.Amount != 700 {
		t.Fatalf("VoidHold = %+v, %v", v, err)
	}
	checkInvariants(t, l)
	head := l.Head()
	if v2, err := l.VoidHold("h1"); err != nil || v2 != v {
		t.Fatalf("second VoidHold = %+v, %v", v2, err)
	}
	if l.Head().Seq != head.Seq {
		t.Fatal("idempotent void appended a chain link")
	}
	if _, err := l.ExtendHold("h1", 1, exp); !errors.Is(err, ErrHoldClosed) {
		t.Fatalf("ExtendHold on closed err = %v", err)
	}
	if _, err := l.VoidHold("nope"); !errors.Is(err, ErrUnknownHold) {
		t.Fatalf("VoidHold unknown err = %v", err)
	}
	if got, ok := l.HoldInfo("h1"); !ok || got != v {
		t.Fatalf("HoldInfo(closed) = %+v, %v", got, ok)
	}
	if st := mustAccount(t, l, c.ID); st.Held != 50 {
		t.Fatalf("account after void = %+v", st)
	}
	// A closed hold's id stays taken.
	if again, err := l.Hold("h1", c.ID, "gw-1", 5, exp); err != nil || again != v {
		t.Fatalf("Hold on a closed id = %+v, %v", again, err)
	}

	// Everything survives a reopen.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLedger(t, fs, "db")
	checkInvariants(t, l)
	if got, ok := l.HoldInfo("h1"); !ok || got != v {
		t.Fatalf("HoldInfo(h1) after reopen = %+v, %v", got, ok)
	}
	if got, ok := l.HoldInfo("h3"); !ok || got.Remaining != 50 || got.Closed {
		t.Fatalf("HoldInfo(h3) after reopen = %+v, %v", got, ok)
	}
	if st := mustAccount(t, l, c.ID); st.Held != 50 || st.Balance != 1000 {
		t.Fatalf("account after reopen = %+v", st)
	}
}

func errOf(_ HoldState, err error) error { return err }

func TestPostDrawsFromHold(t *testing.T) {
	l := openLedger(t, vfs.NewMem(), "db")
	c, _ := mustCreate(t, l, 1000)
	other, _ := mustCreate(t, l, 1000)
	exp := fixedNow().Add(time.Minute)
	mustHold(t, l, "h", c.ID, 300, exp)
	mustHold(t, l, "h-other", other.ID, 10, exp)

	// 250 of the 300 held pays the call.
	p := callPosting("r1", c.ID, "node:p", 200, 50)
	p.Hold = "h"
	mustPost(t, l, p)
	if h, _ := l.HoldInfo("h"); h.Remaining != 50 || h.Closed {
		t.Fatalf("hold after r1 = %+v", h)
	}
	if st := mustAccount(t, l, c.ID); st.Balance != 750 || st.Held != 50 || st.Spent != 250 || st.Calls != 1 {
		t.Fatalf("account after r1 = %+v", st)
	}
	// 50 from the hold, 100 from available.
	p = callPosting("r2", c.ID, "node:p", 120, 30)
	p.Hold = "h"
	mustPost(t, l, p)
	if h, _ := l.HoldInfo("h"); h.Remaining != 0 || h.Closed {
		t.Fatalf("hold after r2 = %+v", h)
	}
	if st := mustAccount(t, l, c.ID); st.Balance != 600 || st.Held != 0 {
		t.Fatalf("account after r2 = %+v", st)
	}
	// Neither hold nor available covers it: nothing applies.
	mustHold(t, l, "h2", c.ID, 100, exp)
	before, _ := l.Balances()
	p = callPosting("r3", c.ID, "node:p", 550, 51)
	p.Hold = "h2"
	if ok, err := l.Post(p); !errors.Is(err, ErrInsufficientFunds) || ok {
		t.Fatalf("overdraw = %v, %v", ok, err)
	}
	if h, _ := l.HoldInfo("h2"); h.Remaining != 100 {
		t.Fatalf("hold after rejected posting = %+v", h)
	}
	if after, _ := l.Balances(); !reflect.DeepEqual(after, before) {
		t.Fatal("rejected posting moved money")
	}
	checkInvariants(t, l)

	// Argument errors.
	for name, tt := range map[string]struct {
		p    Posting
		want error
	}{
		"no consumer":     {Posting{Key: "x", Hold: "h2", Transfers: []Transfer{{From: c.ID, To: "node:p", Amount: 1, Kind: KindCall}}}, ErrInvalid},
		"unknown hold":    {Posting{Key: "x", Hold: "zz", Consumer: c.ID, Transfers: []Transfer{{From: c.ID, To: "node:p", Amount: 1, Kind: KindCall}}}, ErrUnknownHold},
		"another account": {Posting{Key: "x", Hold: "h-other", Consumer: c.ID, Transfers: []Transfer{{From: c.ID, To: "node:p", Amount: 1, Kind: KindCall}}}, ErrInvalid},
	} {
		if ok, err := l.Post(tt.p); !errors.Is(err, tt.want) || ok {
			t.Fatalf("%s: Post = %v, %v", name, ok, err)
		}
	}

	// A posting against a voided hold settles from available.
	if _, err := l.VoidHold("h2"); err != nil {
		t.Fatal(err)
	}
	p = callPosting("r4", c.ID, "node:p", 80, 20)
	p.Hold = "h2"
	mustPost(t, l, p)
	if st := mustAccount(t, l, c.ID); st.Balance != 500 || st.Held != 0 {
		t.Fatalf("account after r4 = %+v", st)
	}
	// Replays do not draw again.
	if mustPost(t, l, p) {
		t.Fatal("replay applied")
	}
	checkInvariants(t, l)
}

func TestExpireHolds(t *testing.T) {
	l := openLedger(t, vfs.NewMem(), "db")
	c, _ := mustCreate(t, l, 1000)
	t0 := fixedNow()
	for i, d := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second} {
		mustHold(t, l, fmt.Sprintf("h%d", i), c.ID, 100, t0.Add(d))
	}
	if n, err := l.ExpireHolds(t0); err != nil || n != 0 {
		t.Fatalf("ExpireHolds(t0) = %d, %v", n, err)
	}
	if n, err := l.ExpireHolds(t0.Add(2 * time.Second)); err != nil || n != 2 {
		t.Fatalf("ExpireHolds(t0+2s) = %d, %v", n, err)
	}
	checkInvariants(t, l)
	if hs := l.Holds(c.ID); len(hs) != 1 || hs[0].ID != "h2" {
		t.Fatalf("open holds = %+v", hs)
	}
	if h, ok := l.HoldInfo("h0"); !ok || !h.Closed || h.Remaining != 0 {
		t.Fatalf("expired hold = %+v", h)
	}
	if st := mustAccount(t, l, c.ID); st.Held != 100 {
		t.Fatalf("account = %+v", st)
	}
	// An extension moves the expiry past the next sweep.
	if _, err := l.ExtendHold("h2", 0, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n, err := l.ExpireHolds(t0.Add(time.Minute)); err != nil || n != 0 {
		t.Fatalf("ExpireHolds after extend = %d, %v", n, err)
	}
	if n, err := l.ExpireHolds(t0.Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("ExpireHolds(t0+1h) = %d, %v", n, err)
	}
	checkInvariants(t, l)
	if st := mustAccount(t, l, c.ID); st.Held != 0 || st.Available() != 1000 {
		t.Fatalf("account = %+v", st)
	}
}
