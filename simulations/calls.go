package simulations

import (
	"fmt"
	"time"

	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/nodecore"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// overloadTimeout is how long a call a node took beyond what its hardware
// serves waits before the gateway gives up on it (a failure).
const overloadTimeout = int64(30 * time.Second)

// badInputAfter is how soon an engine answers a malformed call with a 400.
const badInputAfter = int64(10 * time.Millisecond)

func (w *world) arrival() {
	m, scale := w.chooseModel()
	rate := w.sc.Consumers.Rate * scale
	w.schedule(w.now+int64(w.rArrive.ExpFloat64()/rate*float64(time.Second))+1, evArrival, 0, 0, 0)

	id := w.newCall()
	c := &w.calls[id]
	c.model = int32(m)
	c.gw = int32(w.rArrive.IntN(len(w.gws)))
	c.prompt = uniform(w.rArrive, w.sc.Consumers.PromptTokens)
	c.output = uniform(w.rArrive, w.sc.Consumers.OutputTokens)
	c.bad = w.sc.Consumers.BadInputShare > 0 && w.rArrive.Float64() < w.sc.Consumers.BadInputShare
	w.stats.calls++
	w.stats.perModel[m].calls++
	w.series.cur.calls++
	if w.now >= w.afterFrom() {
		w.stats.after.calls++
	} else if w.now < w.beforeUntil() {
		w.stats.before.calls++
	}
	w.attempt(id)
}

func (w *world) newCall() int32 {
	if n := len(w.freeCall); n > 0 {
		id := w.freeCall[n-1]
		w.freeCall = w.freeCall[:n-1]
		c := &w.calls[id]
		*c = call{gen: c.gen + 1, live: true, prev: -1, next: -1}
		return id
	}
	w.calls = append(w.calls, call{live: true, prev: -1, next: -1})
	return int32(len(w.calls) - 1)
}

func (w *world) freeCallSlot(id int32) {
	w.calls[id].live = false
	w.freeCall = append(w.freeCall, id)
}

// attempt routes call id through its gateway: a pick, and the node's answer.
func (w *world) attempt(id int32) {
	c := &w.calls[id]
	gw := &w.gws[c.gw]
	p := gw.pickers[c.model]
	now := w.time()
	if w.shareWhenIdle != nil {
		w.shareWhenIdle.before(w, p, c.model, now)
	}
	n := p.pick(now, c.excl[:c.nexcl])
	if n < 0 {
		w.refuse(id, false) // every instance in its view is full or parked
		return
	}
	if w.shareWhenIdle != nil {
		w.shareWhenIdle.after(w, n)
	}
	c.excl[c.nexcl] = n
	c.nexcl++
	c.tries++
	nd := &w.nodes[n]
	switch {
	case !nd.online || nd.model != c.model:
		// Dead (not yet removed) or it moved on: connection refused.
		p.release(n, route.Failure, now)
		w.nodeFailed(n)
		w.retryOrFail(id)
		return
	case nd.inFlight >= nd.declared:
		p.release(n, route.Full, now) // its 429: busy, not failing
		c.tries--
		c.fulls++
		w.retryOrFail(id)
		return
	}
	// The node takes the call.
	if w.contended(c.model) { // for newcomer_share_when_contended
		w.contendedPick(n)
	}
	c.node, c.began, c.nodeEpoch = n, w.now, nd.epoch
	c.measuring, c.fails = nd.claimed == 0, false
	nd.inFlight++
	nd.byGW[c.gw]++
	w.modelFlight[c.model]++
	w.link(n, id)
	w.dirty(n)
	end := w.now + nd.ttft
	switch {
	case c.bad:
		end = w.now + badInputAfter
	case nd.inFlight > nd.capacity:
		c.fails, end = true, w.now+overloadTimeout
	case nd.failing || (w.sc.Nodes[nd.group].FailRate > 0 && w.rCall.Float64() < w.sc.Nodes[nd.group].FailRate):
		c.fails = true
	default:
		end += int64(float64(c.output) / nd.tokS * float64(time.Second))
	}
	w.schedule(end, evCallEnd, id, int32(c.gen), 0)
}

// retryOrFail tries another instance, as the gateway does before the first
// byte, or gives the consumer its error.
func (w *world) retryOrFail(id int32) {
	c := &w.calls[id]
	if int(c.tries) <= w.sc.Gateways.Retries && int(c.fulls) < route.MaxFullTries && int(c.nexcl) < len(c.excl) {
		w.attempt(id)
		return
	}
	if c.tries == 0 { // only 429s: no capacity
		w.refuse(id, true)
		return
	}
	w.stats.failed++
	w.series.cur.failed++
	w.freeCallSlot(id)
}

// refuse answers 503 no_capacity. gaveUp: the gateway stopped trying while
// its view still had instances it had not tried.
func (w *world) refuse(id int32, gaveUp bool) {
	c := &w.calls[id]
	w.stats.refused++
	w.stats.perModel[c.model].refused++
	w.refusedMin[c.model]++
	w.series.cur.refused++
	if w.now >= w.afterFrom() {
		w.stats.after.refused++
	} else if w.now < w.beforeUntil() {
		w.stats.before.refused++
	}
	if gaveUp {
		w.stats.refusedWithFree++
	}
	if w.freeHealthyCapacity(c.model) {
		w.stats.refusedStale++
	}
	w.freeCallSlot(id)
}

// freeHealthyCapacity reports whether some node of the model could have
// served: online, not failing, above the floor, declared capacity free.
func (w *world) freeHealthyCapacity(m int32) bool {
	if w.modelFlight[m] >= w.modelDecl[m] {
		return false
	}
	for i := range w.nodes {
		n := &w.nodes[i]
		if n.online && n.model == m && !n.failing && n.tokS >= w.rcfg.FloorTokPerSec && n.inFlight < n.declared && w.sc.Nodes[n.group].FailRate == 0 {
			return true
		}
	}
	return false
}

func (w *world) link(n, id int32) {
	nd := &w.nodes[n]
	c := &w.calls[id]
	c.prev, c.next = -1, nd.calls
	if nd.calls >= 0 {
		w.calls[nd.calls].prev = id
	}
	nd.calls = id
}

func (w *world) unlink(n, id int32) {
	nd := &w.nodes[n]
	c := &w.calls[id]
	if c.prev >= 0 {
		w.calls[c.prev].next = c.next
	} else {
		nd.calls = c.next
	}
	if c.next >= 0 {
		w.calls[c.next].prev = c.prev
	}
	c.prev, c.next = -1, -1
}

// leave takes a call off its node.
func (w *world) leave(id int32) {
	c := &w.calls[id]
	nd := &w.nodes[c.node]
	w.unlink(c.node, id)
	nd.inFlight--
	nd.byGW[c.gw]--
	w.modelFlight[c.model]--
	w.dirty(c.node)
}

func (w *world) callEnd(id int32, gen uint32) {
	c := &w.calls[id]
	if !c.live || c.gen != gen || c.node < 0 {
		return // it ended when its node went away
	}
	n := c.node
	nd := &w.nodes[n]
	if c.nodeEpoch != nd.epoch {
		return
	}
	w.leave(id)
	p := w.gws[c.gw].pickers[c.model]
	now := w.time()
	switch {
	case c.bad:
		wasOpen := p.open(n, now)
		p.release(n, route.Neutral, now)
		if !wasOpen && p.open(n, now) {
			w.stats.neutralParks++ // parked by the consumer's own error
		}
		nd.neutral++
		w.record(n, c.model, nodecore.EventNeutral)
		w.stats.badInput++
		w.freeCallSlot(id)
	case c.fails:
		wasOpen := p.open(n, now)
		p.release(n, route.Failure, now)
		if !wasOpen && p.open(n, now) {
			w.parked(n)
		}
		w.nodeFailed(n)
		c.node = -1
		w.retryOrFail(id)
	default:
		d := time.Duration(float64(c.output) / nd.tokS * float64(time.Second))
		p.release(n, route.Success, now)
		p.observe(n, int64(c.output), d, now)
		if nd.claimed == 0 { // it announces the rate it measured once it served
			nd.claimed = nd.tokS
		}
		w.record(n, c.model, nodecore.EventSuccess)
		w.pay(n, c)
		w.freeCallSlot(id)
	}
}

func (w *world) nodeFailed(n int32) {
	w.nodes[n].failures++
	w.record(n, w.nodes[n].model, nodecore.EventFailure)
}

func (w *world) parked(n int32) {
	w.nodes[n].parks++
}

// pay books a served call: the consumer pays its cost, split by the live
// economy code with the bounty and anti-flap modifiers.
func (w *world) pay(n int32, c *call) {
	nd := &w.nodes[n]
	cost := economy.Cost(w.prices[c.model], int64(c.prompt), int64(c.output))
	tier := w.trust.Tier(time.Duration(w.now-nd.firstSeen), w.score(n, c.model))
	mods := economy.Modifiers{Bounty: w.bounty[c.model].For(tier), Flap: 1}
	if nd.switchedAt != 0 {
		mods.Flap = w.flap.FlapFactor(time.Unix(0, nd.switchedAt), w.time())
	}
	legs := economy.ComputeLegs(cost, w.terms, mods, w.stats.pool)
	w.stats.consumerPaid += legs.Consumer
	w.stats.providers += legs.ToProvider + legs.PoolToProvider
	w.stats.platform += legs.ToPlatform - legs.PlatformToPool
	w.stats.pool += legs.PlatformToPool - legs.PoolToProvider
	nd.earned += legs.ToProvider + legs.PoolToProvider
	nd.served++
	w.stats.served++
	w.stats.tokens += int64(c.output)
	w.series.cur.served++
	if nd.tokS < w.rcfg.FloorTokPerSec {
		if c.measuring {
			w.stats.belowFloorMeasuring++ // the calls that found it out
		} else {
			w.stats.belowFloor++
		}
	}
	w.groups[nd.group].served++
	w.series.cur.byGroup[nd.group]++
}

// record counts an event in the settlement peer's health window.
func (w *world) record(n, m int32, e nodecore.Event) {
	if !w.sc.Reputation.Enabled {
		return
	}
	w.window(n, m).Record(w.hcfg, w.time(), e, 1)
}

func (w *world) window(n, m int32) *nodecore.HealthWindow {
	nd := &w.nodes[n]
	if nd.windows == nil {
		nd.windows = map[int32]*nodecore.HealthWindow{}
	}
	hw := nd.windows[m]
	if hw == nil {
		hw = nodecore.NewHealthWindow(w.hcfg, w.time())
		if len(nd.windows) == 0 && nd.switchedAt == 0 && nd.firstSeen < w.now {
			// A node that was on the network before the start was online
			// for what the window still covers of its past.
			hw.FirstSeen = time.Unix(0, nd.firstSeen)
			from := max(nd.firstSeen, w.now-int64(w.hcfg.Window))
			for t := from; t < w.now; t += int64(w.hcfg.Bucket) {
				d := min(int64(w.hcfg.Bucket), w.now-t)
				hw.AddOnline(w.hcfg, time.Unix(0, t+d-1), time.Duration(d))
			}
		}
		nd.windows[m] = hw
	}
	return hw
}

// score is the instance's health score (1 without reputation), as of the
// settlement peer's last publication (it is recomputed once per publish).
func (w *world) score(n, m int32) float64 {
	if !w.sc.Reputation.Enabled {
		return 1
	}
	nd := &w.nodes[n]
	if nd.scoreTick == w.publishTick && nd.scoreModel == m && nd.scoreGen == nd.gen && w.publishTick > 0 {
		return nd.score
	}
	s := w.window(n, m).Score(w.hcfg, w.time())
	nd.score, nd.scoreTick, nd.scoreModel, nd.scoreGen = s, w.publishTick, m, nd.gen
	return s
}

// firstSeen of the node's instance of its model: settlement starts a new
// instance (and its ramp) when a node takes up a model.
func (w *world) instanceFirstSeen(n int32) int64 {
	nd := &w.nodes[n]
	if w.sc.Reputation.Enabled {
		return w.window(n, nd.model).FirstSeen.UnixNano()
	}
	return nd.firstSeen
}

// dirty schedules an announcement: on change, at most every AnnounceEvery.
func (w *world) dirty(n int32) {
	nd := &w.nodes[n]
	if nd.announcing {
		return
	}
	nd.announcing = true
	w.schedule(max(w.now, nd.lastAnnounce+int64(w.sc.Gateways.AnnounceEvery)), evAnnounce, n, 0, 0)
}

func (w *world) announce(n int32) {
	nd := &w.nodes[n]
	nd.announcing = false
	if !nd.online {
		return
	}
	nd.lastAnnounce = w.now
	for g := range w.gws {
		others := nd.inFlight - nd.byGW[g]
		w.schedule(w.now+w.gws[g].delay, evDeliver, n, int32(g), others<<8|nd.gen&0xff)
	}
}

// deliver applies an announcement at a gateway, as gateway.View does: the
// table gets ramped and declared capacity and the others' calls in flight.
func (w *world) deliver(n, g, packed int32) {
	nd := &w.nodes[n]
	if !nd.online || packed&0xff != nd.gen&0xff {
		return // it went away or is someone else now; its removal is on its way
	}
	gw := &w.gws[g]
	m := nd.model
	if cur := gw.listed(n); cur != m || gw.listedGen[n] != nd.gen {
		// New to this gateway, a new model, or a fresh identity: a new entry.
		if cur >= 0 {
			gw.pickers[cur].remove(n)
		}
		gw.pickers[m].add(n, nd.id)
		gw.setListed(n, m, nd.gen, len(w.nodes))
		if w.sc.Reputation.Enabled {
			gw.pickers[m].setHealth(n, w.score(n, m))
		}
	}
	ramp := w.ramp.Ramp(time.Unix(0, w.instanceFirstSeen(n)), w.time())
	gw.pickers[m].setLoad(n, route.Load{
		Capacity:  nodecore.EffectiveCapacity(int(nd.declared), ramp),
		Declared:  float64(nd.declared),
		InFlight:  int(packed >> 8),
		TokPerSec: nd.claimed,
	}, w.time())
}

func (gw *gateway) listed(n int32) int32 {
	if gw.listedAs == nil {
		return -1
	}
	return gw.listedAs[n]
}

func (gw *gateway) setListed(n, m, gen int32, nodes int) {
	if gw.listedAs == nil {
		gw.listedAs = make([]int32, nodes)
		gw.listedGen = make([]int32, nodes)
		for i := range gw.listedAs {
			gw.listedAs[i] = -1
		}
	}
	gw.listedAs[n], gw.listedGen[n] = m, gen
}

// remove drops a dead node from a gateway's tables once it noticed.
func (w *world) remove(n, epoch int32) {
	nd := &w.nodes[n]
	if nd.online || nd.epoch != epoch {
		return // it came back (or went down again: a later removal is due)
	}
	for g := range w.gws {
		gw := &w.gws[g]
		if m := gw.listed(n); m >= 0 {
			gw.pickers[m].remove(n)
			gw.listedAs[n] = -1
		}
	}
}

// join brings a node online for the first time.
func (w *world) join(n int32) {
	nd := &w.nodes[n]
	g := w.sc.Nodes[nd.group]
	nd.id = fmt.Sprintf("n%d", n)
	w.up(n)
	if g.Episodes.Every > 0 {
		w.schedule(w.now+exp(w.rNode, g.Episodes.Every), evEpisode, n, 1, 0)
	}
	if g.Churn.Every > 0 {
		w.schedule(w.now+exp(w.rNode, g.Churn.Every), evChurn, n, 0, 0)
	}
	if g.Identity.Every > 0 || g.Identity.BelowScore > 0 {
		w.schedule(w.now+int64(time.Hour), evIdentity, n, 0, 0)
	}
	if g.Follow.Every > 0 {
		w.schedule(w.now+w.rNode.Int64N(int64(g.Follow.Every)), evFollow, n, 0, 0)
	}
	if pe := w.sc.Reputation.ProbeEvery; pe > 0 {
		w.schedule(w.now+w.rNode.Int64N(int64(pe)), evProbe, n, 0, 0)
	}
}

func (w *world) up(n int32) {
	nd := &w.nodes[n]
	nd.online = true
	nd.onlineSince = w.now
	w.modelDecl[nd.model] += int64(nd.declared)
	w.dirty(n)
}

// down takes a node offline without a goodbye: its calls break, and each
// gateway drops it after DeadAfter.
func (w *world) down(n int32) {
	nd := &w.nodes[n]
	if !nd.online {
		return
	}
	nd.online = false
	nd.onlineNs += w.now - nd.onlineSince
	w.modelDecl[nd.model] -= int64(nd.declared)
	nd.epoch++
	for id := nd.calls; id >= 0; {
		c := &w.calls[id]
		next := c.next
		w.leave(id)
		p := w.gws[c.gw].pickers[c.model]
		now := w.time()
		if c.bad {
			p.release(c.node, route.Neutral, now)
			w.freeCallSlot(id)
		} else {
			p.release(c.node, route.Failure, now)
			w.nodeFailed(c.node)
			streaming := !c.fails && w.now >= c.began+nd.ttft
			c.node = -1
			if streaming { // broken mid-stream: the consumer sees the error
				w.stats.failed++
				w.series.cur.failed++
				w.freeCallSlot(id)
			} else {
				w.retryOrFail(id)
			}
		}
		id = next
	}
	w.schedule(w.now+int64(w.sc.Gateways.DeadAfter), evRemove, n, nd.epoch, 0)
}

func (w *world) churn(n int32, comeBack bool) {
	g := w.sc.Nodes[w.nodes[n].group]
	if comeBack {
		w.up(n)
		w.schedule(w.now+exp(w.rNode, g.Churn.Every), evChurn, n, 0, 0)
		return
	}
	w.down(n)
	w.schedule(w.now+exp(w.rNode, g.Churn.Down), evChurn, n, 1, 0)
}

func (w *world) episode(n int32, start bool) {
	nd := &w.nodes[n]
	g := w.sc.Nodes[nd.group]
	nd.failing = start
	if start {
		w.schedule(w.now+exp(w.rNode, g.Episodes.For), evEpisode, n, 0, 0)
	} else {
		w.schedule(w.now+exp(w.rNode, g.Episodes.Every), evEpisode, n, 1, 0)
	}
}

// identity: a Sybil drops its identity for a fresh one on schedule or as
// soon as its score shows what it did.
func (w *world) identity(n int32) {
	nd := &w.nodes[n]
	g := w.sc.Nodes[nd.group]
	w.schedule(w.now+int64(time.Hour), evIdentity, n, 0, 0)
	age := w.now - nd.firstSeen
	if !nd.online {
		return
	}
	due := g.Identity.Every > 0 && age >= int64(g.Identity.Every)
	bad := g.Identity.BelowScore > 0 && w.sc.Reputation.Enabled && w.score(n, nd.model) < g.Identity.BelowScore
	if !due && !bad {
		return
	}
	w.down(n)
	nd.gen++
	nd.identities++
	nd.id = fmt.Sprintf("n%d.%d", n, nd.gen)
	nd.firstSeen = w.now
	nd.windows = nil
	nd.switchedAt = 0
	nd.claimed = g.ClaimedTokS
	w.up(n)
}

// follow: an operator looks at the bounty board and may move its node to
// the model that pays it most.
func (w *world) follow(n int32) {
	nd := &w.nodes[n]
	g := w.sc.Nodes[nd.group]
	w.schedule(w.now+int64(g.Follow.Every), evFollow, n, 0, 0)
	if !nd.online || (nd.switchedAt != 0 && w.now-nd.switchedAt < int64(g.Follow.MinStay)) {
		return
	}
	tier := w.trust.Tier(time.Duration(w.now-nd.firstSeen), w.score(n, nd.model))
	best, bestM := w.bounty[nd.model].For(tier), nd.model
	for m := range w.models {
		if b := w.bounty[m].For(tier); b > best+1e-9 {
			best, bestM = b, int32(m)
		}
	}
	if bestM == nd.model || w.rNode.Float64() >= g.Follow.Prob {
		return
	}
	// Calls in flight finish; new ones come for the new model once gateways hear of it.
	w.modelDecl[nd.model] -= int64(nd.declared)
	nd.model = bestM
	w.modelDecl[nd.model] += int64(nd.declared)
	nd.switchedAt = w.now
	nd.switches++
	w.dirty(n)
}

// probe: the settlement peer's probe, answered unless the node is failing.
func (w *world) probe(n int32) {
	nd := &w.nodes[n]
	w.schedule(w.now+int64(w.sc.Reputation.ProbeEvery), evProbe, n, 0, 0)
	if !nd.online {
		return
	}
	if nd.failing || nd.inFlight >= nd.capacity && nd.declared > nd.capacity {
		w.record(n, nd.model, nodecore.EventProbeFail)
		return
	}
	w.record(n, nd.model, nodecore.EventProbeOK)
	if nd.claimed == 0 {
		nd.claimed = nd.tokS
		w.dirty(n)
	}
}

// publish: settlement's health report reaches every gateway; online time
// rolls into the window.
func (w *world) publish() {
	every := int64(w.sc.Reputation.PublishEvery)
	w.schedule(w.now+every, evPublish, 0, 0, 0)
	w.publishTick++
	if !w.sc.Reputation.Enabled {
		return
	}
	now := w.time()
	for i := range w.nodes {
		n := int32(i)
		nd := &w.nodes[i]
		if !nd.online {
			continue
		}
		w.window(n, nd.model).AddOnline(w.hcfg, now, time.Duration(min(every, w.now-nd.onlineSince)))
		s := w.score(n, nd.model) // recomputed: a new tick
		for g := range w.gws {
			gw := &w.gws[g]
			if m := gw.listed(n); m >= 0 {
				gw.pickers[m].setHealth(n, s)
			}
		}
	}
}

// bounties: settlement's bounty pass over supply and demand.
func (w *world) bounties() {
	every := int64(w.sc.Economy.BountyEvery)
	w.schedule(w.now+every, evBounty, 0, 0, 0)
	perMin := float64(time.Minute) / float64(every)
	sds := make([]economy.SupplyDemand, len(w.models))
	for m := range w.models {
		sds[m] = economy.SupplyDemand{
			Model:    w.models[m].Name,
			Capacity: float64(w.modelDecl[m]),
			InFlight: float64(w.modelFlight[m]),
			Unserved: float64(w.refusedMin[m]) * perMin,
		}
		w.refusedMin[m] = 0
		w.bounty[m] = economy.Bounty{}
	}
	for _, b := range economy.Bounties(sds, w.bcfg, w.trust) {
		for m := range w.models {
			if w.models[m].Name == b.Model {
				w.bounty[m] = b
			}
		}
	}
}

// contended reports whether the model's network is contended: at least
// half its declared capacity in use.
func (w *world) contended(m int32) bool {
	return w.modelDecl[m] > 0 && 2*w.modelFlight[m] >= w.modelDecl[m]
}

func (w *world) contendedPick(n int32) {
	w.stats.contended++
	if w.now-w.instanceFirstSeen(n) < int64(w.ramp.Period) {
		w.stats.contendedNew++
	}
}
