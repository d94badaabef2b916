package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/gateway/route"
	"github.com/tokenrouter/tokenrouter/internal/tick"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// followScores fetches the settlement peer's current health scores, then
// follows the ones it publishes, until ctx ends.
func (g *Gateway) followScores(ctx context.Context, wg *sync.WaitGroup) error {
	topic, err := p2p.JoinHealthTopic(g.cfg.Host, g.cfg.Platform, nil)
	if err != nil {
		return err
	}
	sub, err := topic.Subscribe()
	if err != nil {

		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	if resp, err := g.cfg.Host.CallSettle(cctx, g.cfg.Platform, &p2p.SettleRequest{Op: p2p.OpScores}); err == nil && resp.Health != nil {
		g.view.SetReport(resp.Health)
	}
	cancel()
	wg.Go(func() {
		defer sub.Cancel()
		for {
			msg, err := sub.Next(ctx)
			if err != nil {
				return
			}
			if r, ok := msg.ValidatorData.(*p2p.HealthReport); ok {
				g.view.SetReport(r)
			}
		}
	})
	return nil
}

// outcomes gathers the failures and neutral outcomes this gateway saw per
// instance, for its next report to the settlement peer.
type outcomes struct {
	mu       sync.Mutex
	counts   map[instanceKey]*p2p.OutcomeReport
	unserved map[string]uint32 // calls per model turned away: no live instance or none with capacity
	calls    map[string]uint32 // attempts and turned-away calls per model: what an instance passed over missed
}

// called counts one call (or attempt) of model; called with o.mu held.
func (o *outcomes) called(model string) {
	if o.calls == nil {
		o.calls = map[string]uint32{}
	}
	if _, ok := o.calls[model]; ok || len(o.calls) < 10_000 {
		o.calls[model]++
	}
}

// turnedAway counts a call no instance could take: demand the network did not meet.
func (o *outcomes) turnedAway(model string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.unserved == nil {
		o.unserved = map[string]uint32{}
	}
	if len(o.unserved) < 10_000 {
		o.unserved[model]++
	}
	o.called(model)
}

func (o *outcomes) add(node peer.ID, model string, out route.Outcome) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.called(model)
	if out != route.Failure && out != route.Neutral {
		return
	}
	if o.counts == nil {
		o.counts = map[instanceKey]*p2p.OutcomeReport{}
	}
	k := instanceKey{node, model}
	r := o.counts[k]
	if r == nil {
		r = &p2p.OutcomeReport{Node: node.String(), Model: model}
		o.counts[k] = r
	}
	if out == route.Failure {
		r.Failures++
	} else {
		r.Neutral++
	}
}

// take returns what was gathered and starts afresh. passedOver names the
// instances of a model that are out of the running now, and why; each is
// charged with the calls of its model since the last report.
func (o *outcomes) take(passedOver func(model string) map[string]string) ([]p2p.OutcomeReport, map[string]uint32) {
	o.mu.Lock()
	counts, unserved, calls := o.counts, o.unserved, o.calls
	o.counts, o.unserved, o.calls = nil, nil, nil
	o.mu.Unlock()
	if counts == nil {
		counts = map[instanceKey]*p2p.OutcomeReport{}
	}
	for model, n := range calls {
		for id, why := range passedOver(model) {
			node, err := peer.Decode(id)
			if err != nil {
				continue
			}
			k := instanceKey{node, model}
			r := counts[k]
			if r == nil {
				r = &p2p.OutcomeReport{Node: id, Model: model}
				counts[k] = r
			}
			if r.PassedOver == nil {
				r.PassedOver = map[string]uint32{}
			}
			r.PassedOver[why] += n
		}
	}
	out := make([]p2p.OutcomeReport, 0, len(counts))
	for _, r := range counts {
		out = append(out, *r)
	}
	return out, unserved
}

// reportLoop sends what it gathered every interval until ctx ends.
func (g *Gateway) reportLoop(ctx context.Context, every time.Duration) {
	tick.Every(ctx, every, func(time.Time) { g.report(ctx) })
}

// report sends what was gathered since the last report.
func (g *Gateway) report(ctx context.Context) {
	reports, unserved := g.outcomes.take(g.view.passedOver)
	if len(reports) == 0 && len(unserved) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := g.cfg.Host.CallSettle(cctx, g.cfg.Platform, &p2p.SettleRequest{Op: p2p.OpReport, Reports: reports, Unserved: unserved})
	cancel()
	if err != nil {
		g.log.Warn("could not report outcomes to settlement", "err", err)
	}
}
