package ledger

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestCrashRecovery simulates power loss at a random moment while postings
// are being applied from another goroutine. The crashed copy of the disk must
// open with the invariants intact and hold every posting whose Post had
// returned; re-posting everything must then apply each posting exactly once.
func TestCrashRecovery(t *testing.T) {
	const n = 60
	const grant = 1_000_000
	for seed := range uint64(8) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0x7e57))
			fs := vfs.NewCrashableMem()
			l, err := Open("db", Options{FS: fs, Now: fixedNow})
			if err != nil {
				t.Fatal(err)
			}
			consumer, _ := mustCreate(t, l, grant)
			owner, _ := mustCreate(t, l, 0)
			if err := l.LinkNode("peer", owner.ID); err != nil {
				t.Fatal(err)
			}
			postings := make([]Posting, n)
			for i := range postings {
				p := callPosting(fmt.Sprintf("req-%03d", i), consumer.ID, owner.ID, int64(8*(i+1)), int64(2*(i+1)))
				if i%5 == 0 { // some providers are unlinked node accounts
					p.Transfers[0].To = fmt.Sprintf("node:n%d", i%3)
				}
				postings[i] = p
			}

			// Post from a goroutine; crash once `crashAfter` posts have returned,
			// while later posts are in flight.
			crashAfter := rng.IntN(n + 1)
			acked := make(chan int, n)
			done := make(chan error, 1)
			go func() {
				for i, p := range postings {
					if _, err := l.Post(p); err != nil {
						done <- fmt.Errorf("Post(%d): %w", i, err)
						return
					}
					acked <- i
				}
				done <- nil
			}()
			for range crashAfter {
				<-acked
			}
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rng})
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}

			r := openLedger(t, crashed, "db")
			checkInvariants(t, r)
			if _, err := r.AccountByKey("trk_x"); !errors.Is(err, ErrUnknownKey) {
				t.Fatal(err)
			}
			if acct, ok := r.NodeAccount("peer"); !ok || acct != owner.ID {
				t.Fatalf("node link lost: %q %v", acct, ok)
			}
			survived := mustAccount(t, r, consumer.ID).Calls
			if survived < int64(crashAfter) {
				t.Fatalf("%d postings survived, %d were acknowledged", survived, crashAfter)
			}
			for i, p := range postings {
				applied := mustPost(t, r, p)
				if i < crashAfter && applied {
					t.Fatalf("acknowledged posting %d was lost in the crash", i)
				}
				if int64(i) < survived && applied || int64(i) >= survived && !applied {
					t.Fatalf("posting %d: applied=%v with %d survivors (postings must survive in order)", i, applied, survived)
				}
			}

			var spent int64
			for i := range n {
				spent += int64(10 * (i + 1))
			}
			c := mustAccount(t, r, consumer.ID)
			if c.Calls != n || c.Spent != spent || c.Balance != grant-spent {
				t.Fatalf("consumer after replay = %+v, want calls %d spent %d", c, n, spent)
			}
			if p := mustAccount(t, r, AccountPlatform).Balance; p != spent/5 {
				t.Fatalf("platform = %d, want %d", p, spent/5)
			}
			txs, _, err := r.Transactions(consumer.ID, "", MaxTxPageSize)
			if err != nil || len(txs) != 1+2*n {
				t.Fatalf("consumer has %d transfers (%v), want %d", len(txs), err, 1+2*n)
			}
		})
	}
}

// crashOp is one write of the mixed crash workload.
type crashOp struct {
	kind   string // "batch", "hold", "extend", "void", "expire"
	batch  []Posting
	hold   string
	acct   string
	amount int64
	at     time.Time
}

// crashResult is what a crashOp returned.
type crashResult struct {
	batch []BatchResult
	hold  HoldState
	err   error
}

func genCrashOps(rng *rand.Rand, consumers []string, n int) []crashOp {
	t0 := fixedNow()
	var ops []crashOp
	holdsOf := map[string][]string{}
	var holds []string
	for i := range n {
		c := consumers[rng.IntN(len(consumers))]
		switch k := rng.IntN(10); {
		case k < 5 || len(holds) == 0:
			batch := make([]Posting, 1+rng.IntN(8))
			for j := range batch {
				p := callPosting(fmt.Sprintf("op%d-p%d", i, j), c, fmt.Sprintf("node:n%d", rng.IntN(3)), int64(rng.IntN(4000)), int64(rng.IntN(1000)))
				p.Transfers[0].Leg, p.Transfers[1].Leg = "provider", "platform"
				if hs := holdsOf[c]; len(hs) > 0 && rng.IntN(2) == 0 {
					p.Hold = hs[rng.IntN(len(hs))]
				}
				batch[j] = p
			}
			ops = append(ops, crashOp{kind: "batch", batch: batch})
		case k < 7:
			id := fmt.Sprintf("hold-%d", i)
			holds = append(holds, id)
			holdsOf[c] = append(holdsOf[c], id)
			ops = append(ops, crashOp{kind: "hold", hold: id, acct: c, amount: int64(1 + rng.IntN(20_000)), at: t0.Add(time.Duration(rng.IntN(40)) * time.Second)})
		case k < 8:
			ops = append(ops, crashOp{kind: "extend", hold: holds[rng.IntN(len(holds))], amount: int64(rng.IntN(3000)), at: t0.Add(time.Duration(rng.IntN(60)) * time.Second)})
		case k < 9:
			ops = append(ops, crashOp{kind: "void", hold: holds[rng.IntN(len(holds))]})
		default:
			ops = append(ops, crashOp{kind: "expire", at: t0.Add(time.Duration(i) * time.Second)})
		}
	}
	return ops
}

func (op crashOp) run(l *Ledger) crashResult {
	var r crashResult
	switch op.kind {
	case "batch":
		r.batch, r.err = l.PostBatch(op.batch)
	case "hold":
		r.hold, r.err = l.Hold(op.hold, op.acct, "gw", op.amount, op.at)
	case "extend":
		r.hold, r.err = l.ExtendHold(op.hold, op.amount, op.at)
	case "void":
		r.hold, r.err = l.VoidHold(op.hold)
	case "expire":
		_, r.err = l.ExpireHolds(op.at)
	}
	if errors.Is(r.err, ErrInsufficientFunds) || errors.Is(r.err, ErrHoldClosed) || errors.Is(r.err, ErrUnknownHold) {
		r.err = nil // expected outcomes of a random workload
	}
	return r
}

// TestCrashRecoveryMixed crashes a ledger (power loss: unsynced data partly
// lost) while a goroutine runs a mixed workload of PostBatch, holds,
// extensions, voids and expiries. The crashed copy must open with the
// invariants intact, verify, hold every write whose call had returned, and
// apply each posting exactly once when everything is posted again.
func TestCrashRecoveryMixed(t *testing.T) {
	const n = 40
	for seed := range uint64(6) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0xc2a5))
			fs := vfs.NewCrashableMem()
			signer, pub := newKeys(4)
			opts := Options{FS: fs, Now: fixedNow, Signer: signer}
			l, err := Open("db", opts)
			if err != nil {
				t.Fatal(err)
			}
			var consumers []string
			for range 3 {
				st, _ := mustCreate(t, l, 60_000)
				consumers = append(consumers, st.ID)
			}
			ops := genCrashOps(rng, consumers, n)
			results := make([]crashResult, n)
			crashAfter := rng.IntN(n + 1)
			acked := make(chan int, n)
			done := make(chan error, 1)
			go func() {
				for i, op := range ops {
					if results[i] = op.run(l); results[i].err != nil {
						done <- fmt.Errorf("op %d (%s): %w", i, op.kind, results[i].err)
						return
					}
					acked <- i
				}
				done <- nil
			}()
			for range crashAfter {
				<-acked
			}
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rng})
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}

			r := openLedger(t, crashed, "db")
			checkInvariants(t, r)
			survived := map[string]bool{}
			for _, op := range ops {
				for _, p := range op.batch {
					_, found, err := lookupIdem(r.db, idemKey(p.Key))
					if err != nil {
						t.Fatal(err)
					}
					survived[p.Key] = found
				}
			}
			nSurvived := 0
			for _, ok := range survived {
				if ok {
					nSurvived++
				}
			}
			t.Logf("crash after %d of %d ops; %d of %d postings survived, head %d", crashAfter, n, nSurvived, len(survived), r.Head().Seq)
			// Every write acknowledged before the crash is there.
			for i, op := range ops[:crashAfter] {
				res := results[i]
				h, ok := r.HoldInfo(op.hold)
				switch {
				case op.kind == "batch":
					for j, br := range res.batch {
						if br.Applied && !survived[op.batch[j].Key] {
							t.Fatalf("op %d: acknowledged posting %q lost", i, op.batch[j].Key)
						}
					}
				case op.kind == "hold" && res.hold.ID != "" && !ok,
					op.kind == "void" && res.hold.Closed && !h.Closed,
					op.kind == "extend" && res.hold.ID != "" && h.Amount < res.hold.Amount:
					t.Fatalf("op %d (%s %q): acknowledged %+v, after crash %+v %v", i, op.kind, op.hold, res.hold, h, ok)
				}
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := Verify("db", Options{FS: crashed}, pub); err != nil {
				t.Fatalf("Verify after crash: %v", err)
			}

			// Post everything again, twice: survivors are replays, the rest
			// apply now (or fail for funds, or for a hold lost in the crash).
			// No posting may apply twice, and every recorded key applied once.
			r = openLedger(t, crashed, "db")
			applied := map[string]int{}
			for k, ok := range survived {
				if ok {
					applied[k] = 1
				}
			}
			for round := range 2 {
				for i, op := range ops {
					if op.kind != "batch" {
						continue
					}
					res, err := r.PostBatch(op.batch)
					if err != nil {
						t.Fatal(err)
					}
					for j, br := range res {
						key := op.batch[j].Key
						if br.Applied {
							applied[key]++
						}
						if br.Err != nil && !errors.Is(br.Err, ErrInsufficientFunds) && !errors.Is(br.Err, ErrUnknownHold) {
							t.Fatalf("round %d op %d: posting %q: %v", round, i, key, br.Err)
						}
						if applied[key] > 1 {
							t.Fatalf("round %d op %d: posting %q applied twice", round, i, key)
						}
					}
					checkInvariants(t, r)
				}
			}
			for key := range survived {
				_, found, err := lookupIdem(r.db, idemKey(key))
				if err != nil || found != (applied[key] == 1) {
					t.Fatalf("posting %q: recorded %v, applied %d times (%v)", key, found, applied[key], err)
				}
			}
		})
	}
}
