package settlement

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/nodecore"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// Payouts through the running settlement peer (SPEC §5): the bounty paid
// from the pool by trust tier, the anti-flapping cut, no bounty for serving
// oneself, and a pool that never goes negative. Every amount is exact µcr,
// and the ledger's books balance after every step.

// bountyModel is the model the fixture's receipts are for.
const bountyModel = "llama-3-8b"

// history builds an instance's past the way the peer would have seen it and
// hands it to the peer as the snapshot file Reputation.Save writes.
type history struct {
	t    *testing.T
	r    *Reputation
	node string
}

func newHistory(t *testing.T, node string) *history {
	cfg := DefaultReputationConfig()
	// Hourly heartbeats count as time online, so a few hundred announcements
	// stand for weeks of service. The file format does not depend on it.
	cfg.OnlineGap = 2 * time.Hour
	return &history{t: t, r: NewReputation(cfg), node: node}
}

// serve has the node announce models every hour from from through to, each
// hour with 20 billed calls per model.
func (h *history) serve(from, to time.Time, models ...string) {
	for at := from; !at.After(to); at = at.Add(time.Hour) {
		h.r.Announced(announce(h.node, models...), at)
		for _, m := range models {
			h.r.Record(h.node, m, nodecore.EventSuccess, 20, at)
		}
	}
}

// load saves the history and has f's peer load it.
func (h *history) load(f *fixture) {
	h.t.Helper()
	path := filepath.Join(h.t.TempDir(), "health.json")
	if err := h.r.Save(path); err != nil {
		h.t.Fatalf("Save: %v", err)
	}
	if err := f.s.rep.Load(path); err != nil {
		h.t.Fatalf("Load: %v", err)
	}
}

// scarce has the fixture's node announce model live at full load (2 of 2
// calls in flight) and recomputes the bounties: the model is fully
// under-supplied.
func (f *fixture) scarce(t *testing.T, model string) {
	t.Helper()
	now := time.Now()
	f.s.rep.Announced(&p2p.Announcement{Node: f.node.ID().String(), Models: []p2p.ModelLoad{{Model: model, Capacity: 2, InFlight: 2}}}, now)
	f.s.refreshBounties(now)
	if u := f.s.underSupply(model); u != 1 {
		t.Fatalf("test premise: under-supply of %s = %v, want 1", model, u)
	}
}

// tier is the fixture's node's trust tier on model now.
func (f *fixture) tier(model string) economy.Tier {
	st := f.s.rep.Standing(f.node.ID().String(), model, time.Now())
	return f.s.cfg.Trust.Tier(st.Age, st.Score)
}

// fundPool moves amount from mint into the bounty pool.
func (f *fixture) fundPool(t *testing.T, key string, amount int64) {
	t.Helper()
	if _, err := f.led.Post(ledger.Posting{Key: key, Payload: []byte(key), Transfers: []ledger.Transfer{
		{From: ledger.AccountMint, To: ledger.AccountBountyPool, Amount: amount, Kind: ledger.KindGrant},
	}}); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, f.led)
}

// settle1 sends r and fails unless it was applied.
func (f *fixture) settle1(t *testing.T, r *p2p.Receipt) {
	t.Helper()
	resp, err := f.send(t, f.gw, r)
	if err != nil || !resp.Applied {
		t.Fatalf("receipt %s: %+v %v", r.RequestID, resp, err)
	}
}

// wantMoved checks that, from before to now, exactly the legs of n calls
// moved: the consumer paid, the provider earned its share and bonus, the
// platform kept its share less the pool's funding, the pool took the funding
// and paid the bonus, and nothing else changed.
func (f *fixture) wantMoved(t *testing.T, before map[string]int64, consumer, provider string, l economy.Legs, n int64) {
	t.Helper()
	want := map[string]int64{}
	want[consumer] -= n * l.Consumer
	want[provider] += n * (l.ToProvider + l.PoolToProvider)
	// When consumer == provider the consumer -> provider leg is not posted:
	// the sum above nets it out.
	want[ledger.AccountPlatform] += n * (l.ToPlatform - l.PlatformToPool)
	want[ledger.AccountBountyPool] += n * (l.PlatformToPool - l.PoolToProvider)
	after := f.balances(t)
	for id := range after {
		if d := after[id] - before[id]; d != want[id] {
			t.Errorf("%s moved by %d, want %d (legs %+v x%d)", id, d, want[id], l, n)
		}
	}
	for id, w := range want {
		if _, ok := after[id]; !ok && w != 0 {
			t.Errorf("%s does not exist, want it moved by %d", id, w)
		}
	}
	checkInvariants(t, f.led)
}

type bountiesResp struct {
	Object  string           `json:"object"`
	At      time.Time        `json:"computed_at"`
	PoolUcr int64            `json:"pool_ucr"`
	Data    []economy.Bounty `json:"data"`
}

func (f *fixture) bounties(t *testing.T) bountiesResp {
	t.Helper()
	code, body := f.get(t, "/v1/bounties", "")
	if code != http.StatusOK {
		t.Fatalf("GET /v1/bounties = %d %s", code, body)
	}
	var b bountiesResp
	if err := json.Unmarshal(body, &b); err != nil {
		t.Fatalf("GET /v1/bounties: %v: %s", err, body)
	}
	return b
}

// TestPayoutBountyFromPool: an established or trusted instance serving a
// fully under-supplied model is paid its share times the tier's multiplier,
// the extra from the bounty pool; the consumer pays exactly the cost.
func TestPayoutBountyFromPool(t *testing.T) {
	for _, tc := range []struct {
		name     string
		age      time.Duration
		tier     economy.Tier
		bounty   float64
		provider int64 // share + bonus of a 2368 µcr call
	}{
		{"trusted", 20 * 24 * time.Hour, economy.TierTrusted, 2.0, 1894 + 1894},
		{"established", 5 * 24 * time.Hour, economy.TierEstablished, 1.5, 1894 + 947},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			_, consumer := f.signup(t)
			opKey, operator := f.signup(t)
			f.register(t, opKey)
			now := time.Now()
			h := newHistory(t, f.node.ID().String())
			h.serve(now.Add(-tc.age), now, bountyModel)
			h.load(f)
			if got := f.tier(bountyModel); got != tc.tier {
				st := f.s.rep.Standing(f.node.ID().String(), bountyModel, time.Now())
				t.Fatalf("test premise: tier %v (age %v score %v), want %v", got, st.Age, st.Score, tc.tier)
			}
			f.scarce(t, bountyModel)
			const funded = 10_000_000
			f.fundPool(t, "fund-pool", funded)

			b := f.bounties(t)
			if b.Object != "list" || b.PoolUcr != funded || len(b.Data) != 1 {
				t.Fatalf("GET /v1/bounties = %+v", b)
			}
			if got := b.Data[0]; got.Model != bountyModel || got.UnderSupply != 1 ||
				got.Multipliers["new"] != 1 || got.Multipliers["established"] != 1.5 || got.Multipliers["trusted"] != 2 {
				t.Errorf("bounty = %+v, want %s fully under-supplied at 1 / 1.5 / 2", got, bountyModel)
			}
			if got := b.Data[0].For(tc.tier); got != tc.bounty {
				t.Errorf("bounty for %v = %v, want %v", tc.tier, got, tc.bounty)
			}

			// 1234 in + 567 out = 2368 µcr; base 1894; the pool's funding
			// floor(474 * 25%) = 118.
			r := f.receipt(t, consumer, "bounty-1", 1234, 567)
			want := economy.ComputeLegs(r.CostUcr, f.s.cfg.Terms, economy.Modifiers{Bounty: tc.bounty, Flap: 1}, funded)
			if r.CostUcr != 2368 || want.ToProvider != 1894 || want.PlatformToPool != 118 || want.ToProvider+want.PoolToProvider != tc.provider {
				t.Fatalf("test premise: cost %d legs %+v", r.CostUcr, want)
			}
			before := f.balances(t)
			f.settle1(t, r)
			f.wantMoved(t, before, consumer, operator, want, 1)
			if c := f.account(t, consumer); c.Spent != 2368 || c.Calls != 1 {
				t.Errorf("consumer spent %d calls %d, want 2368 and 1", c.Spent, c.Calls)
			}
			if o := f.account(t, operator); o.Earned != tc.provider {
				t.Errorf("operator earned %d, want %d (share and bounty)", o.Earned, tc.provider)
			}
			if got := f.bounties(t).PoolUcr; got != funded+118-(tc.provider-1894) {
				t.Errorf("pool_ucr = %d, want %d", got, funded+118-(tc.provider-1894))
			}

			// A replay pays no second bounty.
			before = f.balances(t)
			if resp, err := f.send(t, f.gw, r); err != nil || resp.Applied {
				t.Fatalf("replay: %+v %v", resp, err)
			}
			wantUnchanged(t, before, f.balances(t))
		})
	}
}

// TestPayoutNoBountyForNewInstance: an instance first seen now earns no
// bounty on the same under-supplied model, however good its record.
func TestPayoutNoBountyForNewInstance(t *testing.T) {
	f := newFixture(t, nil)
	_, consumer := f.signup(t)
	opKey, operator := f.signup(t)
	f.register(t, opKey)
	now := time.Now()
	h := newHistory(t, f.node.ID().String())
	h.serve(now, now, bountyModel)
	h.load(f)
	if got := f.tier(bountyModel); got != economy.TierNew {
		t.Fatalf("test premise: tier %v, want new", got)
	}
	f.scarce(t, bountyModel)
	f.fundPool(t, "fund-pool", 10_000_000)
	if b := f.bounties(t); len(b.Data) != 1 || b.Data[0].Model != bountyModel {
		t.Fatalf("GET /v1/bounties = %+v, want %s listed", b, bountyModel)
	}

	r := f.receipt(t, consumer, "new-1", 1000, 1000) // 3000 µcr: 2400 provider, 600 platform, 150 of it to the pool
	want := economy.ComputeLegs(r.CostUcr, f.s.cfg.Terms, economy.NoModifiers(), 10_000_000)
	if want != (economy.Legs{Consumer: 3000, ToProvider: 2400, ToPlatform: 600, PlatformToPool: 150}) {
		t.Fatalf("test premise: legs %+v", want)
	}
	before := f.balances(t)
	f.settle1(t, r)
	f.wantMoved(t, before, consumer, operator, want, 1)
	if o := f.account(t, operator); o.Earned != 2400 {
		t.Errorf("operator earned %d, want 2400 (no bounty)", o.Earned)
	}
}

// TestPayoutAntiFlapping: a node that served model A for ten days and takes
// up model B is paid half its share on B right after the switch, three
// quarters 36 h later; the cut stays with the platform, the consumer pays
// the full cost.
func TestPayoutAntiFlapping(t *testing.T) {
	const modelA = "qwen-2-7b"
	f := newFixture(t, nil)
	_, consumer := f.signup(t)
	opKey, operator := f.signup(t)
	f.register(t, opKey)
	node := f.node.ID().String()
	now := time.Now()

	h := newHistory(t, node)
	h.serve(now.Add(-10*24*time.Hour), now.Add(-time.Hour), modelA)
	h.load(f)
	if st := f.s.rep.Standing(node, modelA, time.Now()); !st.Known || !st.SwitchedAt.IsZero() {
		t.Fatalf("test premise: standing on A %+v", st)
	}
	// The switch, live: the node announces B now.
	switched := time.Now()
	if fresh := f.s.rep.Announced(announce(node, bountyModel), switched); !fresh {
		t.Fatal("B announced for the first time is not fresh")
	}
	if st := f.s.rep.Standing(node, bountyModel, time.Now()); !st.SwitchedAt.Equal(switched) {
		t.Fatalf("SwitchedAt = %v, want %v", st.SwitchedAt, switched)
	}

	// 3000 µcr: base 2400, half of it 1200; the platform keeps 1800, 150 of
	// its nominal 600 funding the pool.
	r := f.receipt(t, consumer, "flap-0h", 1000, 1000)
	want := economy.Legs{Consumer: 3000, ToProvider: 1200, ToPlatform: 1800, PlatformToPool: 150}
	if got := economy.ComputeLegs(3000, f.s.cfg.Terms, economy.Modifiers{Bounty: 1, Flap: 0.5}, 0); got != want {
		t.Fatalf("test premise: legs %+v", got)
	}
	before := f.balances(t)
	f.settle1(t, r)
	f.wantMoved(t, before, consumer, operator, want, 1)

	// The same node, its switch 36 h ago: 0.75 of the base.
	now = time.Now()
	h = newHistory(t, node)
	h.serve(now.Add(-10*24*time.Hour), now.Add(-36*time.Hour), modelA)
	h.serve(now.Add(-36*time.Hour), now, modelA, bountyModel)
	h.load(f)
	st := f.s.rep.Standing(node, bountyModel, time.Now())
	if d := time.Since(st.SwitchedAt); d < 36*time.Hour || d > 36*time.Hour+time.Minute {
		t.Fatalf("test premise: switched %v ago, want 36 h", d)
	}
	r = f.receipt(t, consumer, "flap-36h", 1000, 1000)
	want = economy.Legs{Consumer: 3000, ToProvider: 1800, ToPlatform: 1200, PlatformToPool: 150}
	before = f.balances(t)
	f.settle1(t, r)
	f.wantMoved(t, before, consumer, operator, want, 1)

	// Model A, never switched: full pay.
	r = f.receiptFor(t, modelA, consumer, "flap-A", 1000, 1000)
	want = economy.Legs{Consumer: 3000, ToProvider: 2400, ToPlatform: 600, PlatformToPool: 150}
	before = f.balances(t)
	f.settle1(t, r)
	f.wantMoved(t, before, consumer, operator, want, 1)

	// After 72 h the cut is gone.
	now = time.Now()
	h = newHistory(t, node)
	h.serve(now.Add(-10*24*time.Hour), now.Add(-73*time.Hour), modelA)
	h.serve(now.Add(-73*time.Hour), now, modelA, bountyModel)
	h.load(f)
	before = f.balances(t)
	f.settle1(t, f.receipt(t, consumer, "flap-73h", 1000, 1000))
	f.wantMoved(t, before, consumer, operator, want, 1)
}

// TestPayoutAntiFlappingWithBounty: with tiers loosened so a node is
// established 36 h after a switch, the bounty multiplies the cut pay, not
// the base: 2400 * 0.75 = 1800, plus half of that from the pool.
func TestPayoutAntiFlappingWithBounty(t *testing.T) {
	const modelA = "qwen-2-7b"
	f := newFixture(t, func(c *Config) { c.Trust.EstablishedAge = 24 * time.Hour })
	_, consumer := f.signup(t)
	opKey, operator := f.signup(t)
	f.register(t, opKey)
	node := f.node.ID().String()
	now := time.Now()
	h := newHistory(t, node)
	h.serve(now.Add(-10*24*time.Hour), now.Add(-36*time.Hour), modelA)
	h.serve(now.Add(-36*time.Hour), now, modelA, bountyModel)
	h.load(f)
	if got := f.tier(bountyModel); got != economy.TierEstablished {
		t.Fatalf("test premise: tier %v, want established", got)
	}
	f.scarce(t, bountyModel)
	f.fundPool(t, "fund-pool", 1_000_000)

	want := economy.Legs{Consumer: 3000, ToProvider: 1800, ToPlatform: 1200, PlatformToPool: 150, PoolToProvider: 900}
	if got := economy.ComputeLegs(3000, f.s.cfg.Terms, economy.Modifiers{Bounty: 1.5, Flap: 0.75}, 1_000_000); got != want {
		t.Fatalf("test premise: legs %+v", got)
	}
	before := f.balances(t)
	f.settle1(t, f.receipt(t, consumer, "flap-bounty", 1000, 1000))
	f.wantMoved(t, before, consumer, operator, want, 1)
}

// TestPayoutNoSelfDealingBounty: a consumer calling through its own trusted
// node on an under-supplied model gets no bounty: the pool would pay it for
// its own calls. It pays the platform's share only.
func TestPayoutNoSelfDealingBounty(t *testing.T) {
	f := newFixture(t, nil)
	key, consumer := f.signup(t)
	f.register(t, key)
	f.trustedOnScarce(t)
	f.fundPool(t, "fund-pool", 10_000_000)

	r := f.receipt(t, consumer, "self-1", 1000, 1000)
	before := f.balances(t)
	f.settle1(t, r)
	after := f.balances(t)
	// No bounty: the consumer is out exactly the platform's 600, 150 of
	// which funds the pool; the pool pays nothing.
	if d := after[consumer] - before[consumer]; d != -600 {
		t.Errorf("consumer moved by %d, want -600", d)
	}
	if d := after[ledger.AccountPlatform] - before[ledger.AccountPlatform]; d != 450 {
		t.Errorf("platform moved by %d, want 450", d)
	}
	if d := after[ledger.AccountBountyPool] - before[ledger.AccountBountyPool]; d != 150 {
		t.Errorf("pool moved by %d, want +150 (funding, no bounty)", d)
	}
	if c := f.account(t, consumer); c.Earned != 0 || c.Spent != 600 || c.Calls != 1 {
		t.Errorf("consumer earned %d spent %d calls %d, want 0, 600, 1", c.Earned, c.Spent, c.Calls)
	}
	checkInvariants(t, f.led)

	// The same node serving someone else does earn the bounty.
	_, other := f.signup(t)
	before = f.balances(t)
	f.settle1(t, f.receipt(t, other, "self-2", 1000, 1000))
	f.wantMoved(t, before, other, consumer, economy.Legs{Consumer: 3000, ToProvider: 2400, ToPlatform: 600, PlatformToPool: 150, PoolToProvider: 2400}, 1)
}

// TestPayoutPoolNeverNegative: an active 2x bounty over an empty pool pays
// only what each call itself funds; the pool ends at zero, never below.
func TestPayoutPoolNeverNegative(t *testing.T) {
	f := newFixture(t, nil)
	_, consumer := f.signup(t)
	opKey, operator := f.signup(t)
	f.register(t, opKey)
	f.trustedOnScarce(t)
	if p := f.account(t, ledger.AccountBountyPool); p.Balance != 0 {
		t.Fatalf("test premise: pool = %d, want 0", p.Balance)
	}

	// Empty pool: the 2400 bonus is capped at this call's 150.
	capped := economy.Legs{Consumer: 3000, ToProvider: 2400, ToPlatform: 600, PlatformToPool: 150, PoolToProvider: 150}
	before := f.balances(t)
	f.settle1(t, f.receipt(t, consumer, "empty-1", 1000, 1000))
	f.wantMoved(t, before, consumer, operator, capped, 1)
	if p := f.account(t, ledger.AccountBountyPool); p.Balance != 0 {
		t.Errorf("pool = %d, want 0", p.Balance)
	}

	// 100 in the pool: the bonus is 100 + 150.
	f.fundPool(t, "fund-100", 100)
	before = f.balances(t)
	f.settle1(t, f.receipt(t, consumer, "small-1", 1000, 1000))
	f.wantMoved(t, before, consumer, operator, economy.Legs{Consumer: 3000, ToProvider: 2400, ToPlatform: 600, PlatformToPool: 150, PoolToProvider: 250}, 1)
	if p := f.account(t, ledger.AccountBountyPool); p.Balance != 0 {
		t.Errorf("pool = %d, want 0", p.Balance)
	}

	// Many at once, in one batch over the wire and racing committers: each
	// still pays only its own funding.
	const n = 24
	rs := make([]*p2p.Receipt, n)
	for i := range rs {
		rs[i] = f.receipt(t, consumer, fmt.Sprintf("batch-%d", i), 1000, 1000)
	}
	before = f.balances(t)
	resp, err := f.call(t, f.gw, &p2p.SettleRequest{Op: p2p.OpReceipts, Receipts: rs})
	if err != nil || len(resp.Results) != n {
		t.Fatalf("batch: %+v %v", resp, err)
	}
	for i, res := range resp.Results {
		if !res.Applied || res.Error != nil {
			t.Errorf("batch receipt %d: %+v", i, res)
		}
	}
	f.wantMoved(t, before, consumer, operator, capped, n)
	if p := f.account(t, ledger.AccountBountyPool); p.Balance != 0 {
		t.Errorf("pool = %d after the batch, want 0", p.Balance)
	}
	if b := f.bounties(t); b.PoolUcr != 0 || len(b.Data) != 1 {
		t.Errorf("GET /v1/bounties = %+v, want an active bounty over an empty pool", b)
	}
	if o := f.account(t, operator); o.Earned != (n+1)*2550+2650 {
		t.Errorf("operator earned %d, want %d", o.Earned, (n+1)*2550+2650)
	}
}

// trustedOnScarce makes the fixture's node a trusted instance of
// bountyModel (20 days served) and that model fully under-supplied.
func (f *fixture) trustedOnScarce(t *testing.T) {
	t.Helper()
	now := time.Now()
	h := newHistory(t, f.node.ID().String())
	h.serve(now.Add(-20*24*time.Hour), now, bountyModel)
	h.load(f)
	if got := f.tier(bountyModel); got != economy.TierTrusted {
		t.Fatalf("test premise: tier %v, want trusted", got)
	}
	f.scarce(t, bountyModel)
}

// TestPayoutPoolRaceCapped: a pool holding less than a batch of bounties
// wants, spent by racing committers: every receipt settles, the pool pays
// out exactly what it held plus what the calls funded, and ends at zero.
func TestPayoutPoolRaceCapped(t *testing.T) {
	f := newFixture(t, nil)
	_, consumer := f.signup(t)
	opKey, operator := f.signup(t)
	f.register(t, opKey)
	f.trustedOnScarce(t)
	const held = 5000 // two full 2400 bonuses and change
	f.fundPool(t, "fund-5000", held)

	const n = 48
	rs := make([]*p2p.Receipt, n)
	for i := range rs {
		rs[i] = f.receipt(t, consumer, fmt.Sprintf("race-%d", i), 1000, 1000)
	}
	before := f.balances(t)
	resp, err := f.call(t, f.gw, &p2p.SettleRequest{Op: p2p.OpReceipts, Receipts: rs})
	if err != nil || len(resp.Results) != n {
		t.Fatalf("batch: %+v %v", resp, err)
	}
	for i, res := range resp.Results {
		if !res.Applied || res.Error != nil {
			t.Errorf("receipt %d: %+v", i, res)
		}
	}
	checkInvariants(t, f.led)
	after := f.balances(t)
	// Each call funds 150 and wants a 2400 bonus: the pool pays all it has.
	wantBonus := int64(held + n*150)
	if d := after[operator] - before[operator]; d != n*2400+wantBonus {
		t.Errorf("operator earned %d, want %d (shares %d + bonus %d)", d, n*2400+wantBonus, n*2400, wantBonus)
	}
	if d := after[consumer] - before[consumer]; d != -n*3000 {
		t.Errorf("consumer paid %d, want %d", -d, n*3000)
	}
	if d := after[ledger.AccountPlatform] - before[ledger.AccountPlatform]; d != n*450 {
		t.Errorf("platform moved by %d, want %d", d, n*450)
	}
	if after[ledger.AccountBountyPool] != 0 {
		t.Errorf("pool = %d, want 0", after[ledger.AccountBountyPool])
	}
}

// TestPayoutSelfDealingMixedBatch: in one batch, calls a node's owner makes
// through it earn no bounty while calls of others through the same node do.
func TestPayoutSelfDealingMixedBatch(t *testing.T) {
	f := newFixture(t, nil)
	key, owner := f.signup(t)
	_, other := f.signup(t)
	f.register(t, key)
	f.trustedOnScarce(t)
	f.fundPool(t, "fund-pool", 10_000_000)

	var rs []*p2p.Receipt
	for i := range 4 {
		rs = append(rs, f.receipt(t, owner, fmt.Sprintf("own-%d", i), 1000, 1000), f.receipt(t, other, fmt.Sprintf("other-%d", i), 1000, 1000))
	}
	before := f.balances(t)
	resp, err := f.call(t, f.gw, &p2p.SettleRequest{Op: p2p.OpReceipts, Receipts: rs})
	if err != nil || len(resp.Results) != len(rs) {
		t.Fatalf("batch: %+v %v", resp, err)
	}
	for i, res := range resp.Results {
		if !res.Applied || res.Error != nil {
			t.Errorf("receipt %d: %+v", i, res)
		}
	}
	checkInvariants(t, f.led)
	after := f.balances(t)
	// owner: 4 x -600 for its own calls, 4 x (2400 + 2400) for the others'.
	if d := after[owner] - before[owner]; d != 4*(-600)+4*4800 {
		t.Errorf("owner moved by %d, want %d", d, 4*(-600)+4*4800)
	}
	if d := after[other] - before[other]; d != -4*3000 {
		t.Errorf("other moved by %d, want %d", d, -4*3000)
	}
	if d := after[ledger.AccountBountyPool] - before[ledger.AccountBountyPool]; d != 8*150-4*2400 {
		t.Errorf("pool moved by %d, want %d", d, 8*150-4*2400)
	}
	if d := after[ledger.AccountPlatform] - before[ledger.AccountPlatform]; d != 8*450 {
		t.Errorf("platform moved by %d, want %d", d, 8*450)
	}
}

// TestPayoutAntiFlappingSwitchBack: a node that served A, switched to B and
// now switches back to A has switched the model it serves (SPEC §5): its
// pay on A is cut. Chasing a bounty between two models it has served before
// must not be free.
func TestPayoutAntiFlappingSwitchBack(t *testing.T) {
	const modelA = "qwen-2-7b"
	f := newFixture(t, nil)
	_, consumer := f.signup(t)
	opKey, operator := f.signup(t)
	f.register(t, opKey)
	node := f.node.ID().String()
	now := time.Now()
	h := newHistory(t, node)
	h.serve(now.Add(-10*24*time.Hour), now.Add(-4*24*time.Hour), modelA)
	h.serve(now.Add(-4*24*time.Hour), now.Add(-time.Hour), bountyModel) // switched to B four days ago, A dropped
	h.load(f)

	// Back to A, live.
	f.s.rep.Announced(announce(node, modelA), time.Now())
	st := f.s.rep.Standing(node, modelA, time.Now())
	before := f.balances(t)
	f.settle1(t, f.receiptFor(t, modelA, consumer, "back-to-A", 1000, 1000))
	after := f.balances(t)
	got := after[operator] - before[operator]
	if got != 1200 {
		t.Fatalf("switching back to a model served before must be cut: operator paid %d on A right after switching back from B, want 1200 (0.5 x 2400); SwitchedAt on A = %v", got, st.SwitchedAt)
	}
	f.wantMoved(t, before, consumer, operator, economy.Legs{Consumer: 3000, ToProvider: 1200, ToPlatform: 1800, PlatformToPool: 150}, 1)
}
