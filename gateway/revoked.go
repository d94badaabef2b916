package gateway

import (
	"context"
	"encoding/hex"
	"sync"
	"time"

	"github.com/tokenrouter/tokenrouter/p2p"
)

// followRevocations drops every API key the platform revokes from the
// auth cache the moment the revocation arrives (by gossip, or straight from
// the platform, which waits for this gateway to acknowledge it), so a
// revoked key stops on this gateway at once, not when its cached check
// expires.
func (g *Gateway) followRevocations(ctx context.Context, wg *sync.WaitGroup) error {
	topic, err := p2p.JoinRevokedTopic(g.cfg.Host, g.cfg.Platform, nil)
	if err != nil {
		return err
	}
	sub, err := topic.Subscribe()
	if err != nil {
		return err
	}
	p2p.ServeRevoke(g.cfg.Host, g.cfg.Platform, g.applyRevocation) // the platform's direct, acknowledged copy
	wg.Go(func() {
		defer sub.Cancel()
		defer g.cfg.Host.RemoveStreamHandler(p2p.ProtoRevoke)
		for {
			msg, err := sub.Next(ctx)
			if err != nil {
				return
			}
			if r, ok := msg.ValidatorData.(*p2p.KeyRevocation); ok {
				g.applyRevocation(r)
			}
		}
	})
	return nil
}

// applyRevocation drops revoked keys from the auth cache. It runs twice for
// most revocations (gossip, and directly from the platform): harmless.
func (g *Gateway) applyRevocation(r *p2p.KeyRevocation) {
	sums := make([][32]byte, 0, len(r.KeyHashes))
	for _, h := range r.KeyHashes {
		var sum [32]byte
		if n, err := hex.Decode(sum[:], []byte(h)); err == nil && n == 32 {
			sums = append(sums, sum)
		}
	}
	g.auth.revoke(sums, time.Now())
	g.log.Debug("API keys revoked by the platform", "keys", len(sums))
}
