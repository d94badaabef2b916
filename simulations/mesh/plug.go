package mesh

import (
	"context"
	"log/slog"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// This file is where the run meets the live p2p layer: the announcement
// validator, GossipSub scoring and the membership layer.

// joinLoadTopic joins name on ps behind the live announcement validator
// (what p2p.JoinLoadTopic registers on p2p.TopicLoad).
func joinLoadTopic(ps *pubsub.PubSub, name string) (*pubsub.Topic, error) {
	if err := ps.RegisterTopicValidator(name, p2p.NewLoadValidator(time.Now)); err != nil {
		return nil, err
	}
	return ps.Join(name)
}

// scoreOptions are the live host's GossipSub scoring options: its own
// application scores, with the bootstrap peers trusted (p2p.NewHost).
func scoreOptions(bootstraps []peer.ID) ([]pubsub.Option, error) {
	s, err := p2p.NewAppScores(p2p.DefaultAppScoresConfig())
	if err != nil {
		return nil, err
	}
	for _, b := range bootstraps {
		s.Trust(b)
	}
	return s.Options(), nil
}

// downFunc receives a membership report that peer p is Suspect or Dead.
type downFunc func(p peer.ID, state string, at time.Time)

// memberHandle is one host's membership layer.
type memberHandle struct {
	m    *p2p.Membership
	left chan struct{} // closed once the membership has closed
}

// startMembership starts the live membership layer (p2p.StartMembership,
// default configuration) on h; when down is set, it gets every Suspect
// and Dead report. The membership closes (leaving, as the live host does)
// when ctx ends, and only then: a killed host's leave never gets out (its
// endpoint is closed first).
//
// Nothing here calls Membership.Close: under synctest a second Close,
// waiting on the first's sync.Once while that one waits for the leave's
// timer, is not durably blocked, so virtual time would stop. The end of
// the subscription (which Close ends) says it has closed.
func startMembership(ctx context.Context, h host.Host, log *slog.Logger, down downFunc) (*memberHandle, error) {
	m, err := p2p.StartMembership(ctx, h, p2p.DefaultMembershipConfig(), log)
	if err != nil {
		return nil, err
	}
	mh := &memberHandle{m: m, left: make(chan struct{})}
	events, _ := m.Subscribe()
	go func() {
		defer close(mh.left)
		for e := range events {
			if down == nil {
				continue
			}
			switch e.State {
			case p2p.MemberSuspect:
				down(e.Peer, stateSuspect, time.Now())
			case p2p.MemberDead:
				down(e.Peer, stateDead, time.Now())
			}
		}
	}()
	return mh, nil
}

// join joins peers, as the live host's keepMembership does while this
// member knows no other.
func (mh *memberHandle) join(ctx context.Context, peers []peer.ID) error {
	if mh.m.NumMembers() > 1 {
		return nil
	}
	jctx, cancel := context.WithTimeout(ctx, redialEvery)
	defer cancel()
	_, err := mh.m.Join(jctx, peers)
	return err
}

// wait waits until the membership has closed (its context ended).
func (mh *memberHandle) wait() { <-mh.left }

// membershipBuiltIn says whether startMembership runs the live layer.
const membershipBuiltIn = true
