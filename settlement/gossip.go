package settlement

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/internal/tick"
	"github.com/tokenrouter/tokenrouter/nodecore"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// twinCheckEvery is how often connections to one peer id from hosts with
// different addresses are pinged (p2p.WatchTwins).
const twinCheckEvery = 3 * time.Second

// runReputation follows announcements, probes live instances, publishes
// scores and keeps the window on disk until ctx ends.
func (s *Settlement) runReputation(ctx context.Context) error {
	load, err := p2p.JoinLoadTopic(s.cfg.Host, nil)
	if err != nil {
		return err
	}
	sub, err := load.Subscribe()
	if err != nil {
		return err
	}
	defer sub.Cancel()
	health, err := p2p.JoinHealthTopic(s.cfg.Host, s.cfg.Host.ID(), nil)
	if err != nil {
		return err
	}

	publishSoon := make(chan struct{}, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	self := s.cfg.Host.ID().String()
	soon := func() {
		select {
		case publishSoon <- struct{}{}:
		default:
		}
	}
	wg.Go(func() {
		for {
			msg, err := sub.Next(ctx)
			if err != nil {
				return
			}
			// Nodes of another platform earn no reputation here: their
			// claims are for another settlement peer.
			now := time.Now()
			switch a := msg.ValidatorData.(type) {
			case *p2p.Announcement:
				if a.Platform != self {
					continue
				}
				twin := s.observeTwins(a, now)
				if s.rep.Announced(a, now) || twin {
					soon()
				}
			case *p2p.StrayAnnouncement:
				if a.Platform == self && s.observeTwins(&a.Announcement, now) {
					soon()
				}
			}
		}
	})
	wg.Go(func() { s.publishLoop(ctx, health, publishSoon) })
	// Two hosts behind one peer id starve each other's gossip (GossipSub
	// keeps one stream per peer id): watch connections too.
	wg.Go(func() {
		err := p2p.WatchTwins(ctx, s.cfg.Host, twinCheckEvery, func(h p2p.HostSighting) {
			if s.observeHost(h.Peer, true, h.Addrs, h.Seq, time.Now()) {
				soon()
			}
		})
		if err != nil {
			s.log.Warn("cannot watch connections for copied identities", "err", err)
		}
	})
	wg.Go(func() { s.probeLoop(ctx) })
	if f := s.cfg.Reputation.SnapshotFile; f != "" {
		wg.Go(func() { s.saveLoop(ctx, f) })
	}
	<-ctx.Done()
	return nil
}

func (s *Settlement) publishLoop(ctx context.Context, topic *pubsub.Topic, soon <-chan struct{}) {
	t := time.NewTicker(s.cfg.Reputation.PublishEvery)
	defer t.Stop()
	seq := uint64(time.Now().UnixNano()) // grows across restarts
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-soon:
			// let a burst of new instances arrive together
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
		for _, node := range s.rep.SweepRefusals(time.Now()) {
			s.log.Warn("readmitting a node: only one host announces its peer id now", "node", node)
		}
		for _, r := range s.healthReports(&seq, time.Now()) {
			data, _ := json.Marshal(r)
			if err := topic.Publish(ctx, data); err != nil && ctx.Err() == nil {
				s.log.Warn("publish health scores", "err", err)
			}
		}
	}
}

// healthReports cuts the current scores into messages of at most
// MaxScoresPerReport.
func (s *Settlement) healthReports(seq *uint64, now time.Time) []*p2p.HealthReport {
	scores := s.rep.Scores(now)
	refused := s.rep.Refusals(now)
	if len(refused) > p2p.MaxRefusalsPerReport {
		refused = refused[:p2p.MaxRefusalsPerReport]
	}
	var out []*p2p.HealthReport
	for len(scores) > 0 || len(out) == 0 {
		n := min(len(scores), p2p.MaxScoresPerReport)
		*seq++
		out = append(out, &p2p.HealthReport{
			TimeMs: now.UnixMilli(), Seq: *seq, RampStart: s.cfg.Reputation.Ramp.Start, Scores: scores[:n],
			Refused: refused,
		})
		scores = scores[n:]
	}
	return out
}

// probeLoop probes every live instance every ProbeEvery, a few at a time.
func (s *Settlement) probeLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.Reputation.ProbeEvery)
	defer t.Stop()
	sem := make(chan struct{}, 8)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var wg sync.WaitGroup
		for _, in := range s.rep.Scores(time.Now()) {
			id, err := peer.Decode(in.Node)
			if err != nil {
				continue
			}
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				err := s.prober.probe(ctx, id, in.Model)
				switch {
				case ctx.Err() != nil, errors.Is(err, p2p.ErrNodeFull):
					// says nothing of its health
				case err != nil:
					s.rep.Record(in.Node, in.Model, nodecore.EventProbeFail, 1, time.Now())
					s.log.Info("probe failed", "node", in.Node, "model", in.Model, "err", err)
				default:
					s.rep.Record(in.Node, in.Model, nodecore.EventProbeOK, 1, time.Now())
				}
			})
		}
		wg.Wait()
	}
}

func (s *Settlement) saveLoop(ctx context.Context, path string) {
	save := func(time.Time) {
		if err := s.rep.Save(path); err != nil {
			s.log.Error("save health window", "err", err)
		}
	}
	tick.Every(ctx, s.cfg.Reputation.SaveEvery, save)
	save(time.Now()) // and once more on the way out
}

// observeTwins feeds an announcement to the twin detector, logs a refusal
// that starts or ends, and reports whether one did.
func (s *Settlement) observeTwins(a *p2p.Announcement, now time.Time) (changed bool) {
	return s.observeHost(a.Node, false, a.Addrs, a.Seq, now)
}

// observeHost is observeTwins for an announcement, or with conn for a host
// found alive behind a connection.
func (s *Settlement) observeHost(node string, conn bool, addrs []string, seq uint64, now time.Time) (changed bool) {
	changed, ref, refused := s.rep.ObserveAddrs(node, conn, addrs, seq, now)
	switch {
	case changed && refused:
		s.log.Warn("refusing a node: its peer id is announced by more than one host", "node", node, "reason", ref.Reason)
	case changed:
		s.log.Warn("readmitting a node: only one host announces its peer id now", "node", node)
	}
	return changed
}
