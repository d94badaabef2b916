package settlement

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/nodecore"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// GrantTTL is how long a grant lets a gateway bill an account after it last
// presented one of the account's API keys. Receipts delayed by an outage
// settle as long as the call itself happened within it.
const GrantTTL = time.Hour

// grant signs that gateway presented an API key of account.
func (s *Settlement) grant(account string, gateway peer.ID) *p2p.Grant {
	g := &p2p.Grant{Account: account, Gateway: gateway.String(), ExpiresMs: time.Now().Add(GrantTTL).UnixMilli()}
	if err := g.Sign(s.cfg.Host.Key); err != nil {
		s.log.Error("cannot sign a grant", "err", err)
		return nil
	}
	s.gateways.seen(gateway, time.Now())
	return g
}

// checkGrant makes sure a receipt bills an account its gateway was granted:
// a gateway can only spend the credits of consumers whose API key it holds.
func (s *Settlement) checkGrant(r *p2p.Receipt) error {
	switch {
	case isSystemAccount(r.Consumer):
		return fmt.Errorf("%w: %s cannot be a consumer", ErrReceiptRejected, r.Consumer)
	case r.Grant == nil:
		return fmt.Errorf("%w: no grant for consumer %s", ErrReceiptRejected, r.Consumer)
	case r.Grant.Account != r.Consumer || r.Grant.Gateway != r.Gateway:
		return fmt.Errorf("%w: the grant is for another account or gateway", ErrReceiptRejected)
	case r.TimeMs > r.Grant.ExpiresMs:
		return fmt.Errorf("%w: the call came after its grant expired", ErrReceiptRejected)
	case r.TimeMs < r.Grant.ExpiresMs-GrantTTL.Milliseconds()-time.Minute.Milliseconds():
		return fmt.Errorf("%w: the call is dated before its grant was given", ErrReceiptRejected)
	case r.TimeMs > time.Now().Add(time.Minute).UnixMilli():
		return fmt.Errorf("%w: the call is dated in the future", ErrReceiptRejected)
	}
	if s.grantSeen(r.Grant) {
		return nil
	}
	if err := r.Grant.Verify(s.cfg.Host.Key.GetPublic()); err != nil {
		return fmt.Errorf("%w: %v", ErrReceiptRejected, err)
	}
	s.grantOK(r.Grant)
	return nil
}

// maxVerifiedGrants bounds the cache of grant signatures already checked.
const maxVerifiedGrants = 100_000

// grantSeen reports whether this exact grant (signature included) was
// verified before: a gateway sends the same grant with every receipt of
// an account, and one Ed25519 verification per receipt would dominate intake.
func (s *Settlement) grantSeen(g *p2p.Grant) bool {
	k, ok := grantKey(g)
	if !ok {
		return false
	}
	s.grantMu.RLock()
	v, found := s.grantsOK[k]
	s.grantMu.RUnlock()
	// The signature maps to the fields it was verified with; a valid
	// signature with other fields must not pass.
	return found && v.account == g.Account && v.gateway == g.Gateway && v.expires == g.ExpiresMs
}

func (s *Settlement) grantOK(g *p2p.Grant) {
	k, ok := grantKey(g)
	if !ok {
		return
	}
	s.grantMu.Lock()
	defer s.grantMu.Unlock()
	if s.grantsOK == nil || len(s.grantsOK) >= maxVerifiedGrants {
		s.grantsOK = map[[64]byte]grantFields{}
	}
	s.grantsOK[k] = grantFields{g.Account, g.Gateway, g.ExpiresMs}
}

type grantFields struct {
	account, gateway string
	expires          int64
}

// grantKey is an Ed25519 grant signature as a map key.
func grantKey(g *p2p.Grant) ([64]byte, bool) {
	if len(g.Sig) != 64 {
		return [64]byte{}, false
	}
	return [64]byte(g.Sig), true
}

func isSystemAccount(id string) bool {
	switch id {
	case ledger.AccountMint, ledger.AccountPlatform, ledger.AccountBountyPool:
		return true
	}
	return strings.HasPrefix(id, ledger.NodeAccountPrefix)
}

// Bounds on what the gateway book remembers.
const (
	maxTrackedGateways = 100_000
	maxTrackedReports  = 1_000_000
)

// maxReportsPerHour caps the failures one gateway may report against one
// instance in an hour: a liar can dent a score, not sink it.
const maxReportsPerHour = 60

// gatewayBook remembers which gateways hold grants (only they may report
// outcomes) and how much each reported.
type gatewayBook struct {
	mu       sync.Mutex
	lastSeen map[peer.ID]time.Time
	hour     int64
	reported map[string]uint32 // gateway|node|model -> failures this hour
}

func (b *gatewayBook) seen(g peer.ID, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.lastSeen == nil {
		b.lastSeen = map[peer.ID]time.Time{}
	}
	if len(b.lastSeen) >= maxTrackedGateways {
		for p, t := range b.lastSeen {
			if now.Sub(t) > GrantTTL {
				delete(b.lastSeen, p)
			}
		}
	}
	b.lastSeen[g] = now
}

// granted reports whether g was granted an account within GrantTTL.
func (b *gatewayBook) granted(g peer.ID, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.lastSeen[g]
	return ok && now.Sub(t) <= GrantTTL
}

// allow returns how many of n failures gateway g may report now.
func (b *gatewayBook) allow(g peer.ID, node, model string, n uint32, now time.Time) uint32 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if t, ok := b.lastSeen[g]; !ok || now.Sub(t) > GrantTTL {
		return 0
	}
	if h := now.Unix() / 3600; h != b.hour || b.reported == nil {
		b.hour, b.reported = h, map[string]uint32{}
	}
	k := g.String() + "|" + node + "|" + model
	if _, ok := b.reported[k]; !ok && len(b.reported) >= maxTrackedReports {
		return 0
	}
	n = min(n, maxReportsPerHour-min(b.reported[k], maxReportsPerHour))
	b.reported[k] += n
	return n
}

// takeReports records the failures and neutral outcomes a gateway saw.
func (s *Settlement) takeReports(g peer.ID, reports []p2p.OutcomeReport, now time.Time) {
	if !s.gateways.granted(g, now) {
		return // only gateways that hold a grant may speak about nodes
	}
	for _, r := range reports {
		if _, err := peer.Decode(r.Node); err != nil || r.Model == "" {
			continue
		}
		if n := s.gateways.allow(g, r.Node, r.Model, r.Failures, now); n > 0 {
			s.rep.Record(r.Node, r.Model, nodecore.EventFailure, n, now)
		}
		s.rep.Record(r.Node, r.Model, nodecore.EventNeutral, min(r.Neutral, maxReportsPerHour), now)
		for why, n := range r.PassedOver {
			s.rep.PassedOver(r.Node, r.Model, why, min(n, maxReportsPerHour))
		}
	}
}
