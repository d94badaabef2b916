package gateway

import (
	"context"
	"crypto/sha256"
	"errors"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// errUnknownKey means settlement does not know the API key.
var errUnknownKey = errors.New("gateway: invalid API key")

// authCache remembers which account an API key belongs to and its balance,
// for ttl, keyed by the key's hash (the plaintext is not kept).
type authCache struct {
	h        *p2p.Host
	platform peer.ID
	ttl      time.Duration

	mu      sync.Mutex
	entries map[[32]byte]*authEntry
}

type authEntry struct {
	account *p2p.AccountInfo // nil: settlement said the key is unknown
	fetched time.Time
	spent   int64 // µcr this gateway charged since fetched
}

func newAuthCache(h *p2p.Host, platform peer.ID, ttl time.Duration) *authCache {
	return &authCache{h: h, platform: platform, ttl: ttl, entries: map[[32]byte]*authEntry{}}
}

// check returns the key's account and the balance this gateway believes it
// has (settled balance minus what it charged since it last asked).
func (a *authCache) check(ctx context.Context, key string) (account string, balance int64, err error) {
	sum := sha256.Sum256([]byte(key))
	a.mu.Lock()
	e := a.entries[sum]
	if e != nil && time.Since(e.fetched) < a.ttl {
		defer a.mu.Unlock()
		if e.account == nil {
			return "", 0, errUnknownKey
		}
		return e.account.Account, e.account.BalanceUcr - e.spent, nil
	}
	a.mu.Unlock()
	info, err := a.fetch(ctx, key)
	if err != nil && !errors.Is(err, errUnknownKey) {
		return "", 0, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.entries) > 100_000 {
		clear(a.entries) // bounded; a cleared cache only costs a lookup
	}
	a.entries[sum] = &authEntry{account: info, fetched: time.Now()}
	if info == nil {
		return "", 0, errUnknownKey
	}
	return info.Account, info.BalanceUcr, nil
}

// charged lowers the believed balance of key's account until the next fetch.
func (a *authCache) charged(key string, ucr int64) {
	sum := sha256.Sum256([]byte(key))
	a.mu.Lock()
	defer a.mu.Unlock()
	if e := a.entries[sum]; e != nil {
		e.spent += ucr
	}
}

// fetch asks settlement for the key's account; (nil, errUnknownKey) when unknown.
func (a *authCache) fetch(ctx context.Context, key string) (*p2p.AccountInfo, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := a.h.CallSettle(cctx, a.platform, &p2p.SettleRequest{Op: p2p.OpAccount, APIKey: key})
	var rpcErr *p2p.RPCError
	if errors.As(err, &rpcErr) && rpcErr.Code == p2p.CodeUnknownKey {
		return nil, errUnknownKey
	}
	if err != nil {
		return nil, err
	}
	if resp.Account == nil {
		return nil, errors.New("gateway: settlement answered without an account")
	}
	return resp.Account, nil
}
