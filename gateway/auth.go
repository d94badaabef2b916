package gateway

import (
	"context"
	"crypto/sha256"
	"errors"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/p2p"
	"golang.org/x/sync/singleflight"
)

// staleAuth is how long a confirmed key keeps working while settlement is
// unreachable: the life of a credit-line hold.
const staleAuth = 10 * time.Minute

// errUnknownKey means settlement does not know the API key.
var errUnknownKey = errors.New("gateway: invalid API key")

// errNodeKey means the key is a node's: it cannot pay for calls.
var errNodeKey = errors.New("gateway: a node's API key cannot pay for calls")

// nodeKeyMessage is what a caller with a node's key is told.
const nodeKeyMessage = "this API key is a node's: it links the node to its account and reads the account, " +
	"and cannot pay for calls; use a key of the account"

// authCache remembers which account an API key belongs to and its balance,
// for ttl, keyed by the key's hash (the plaintext is not kept).
type authCache struct {
	h        *p2p.Host
	platform peer.ID
	ttl      time.Duration

	mu      sync.Mutex
	entries map[[32]byte]*authEntry
	// revoked holds the keys the platform revoked, until staleAuth after
	// (by then no cached entry or stale fallback can outlive it).
	revoked map[[32]byte]time.Time
	flight  singleflight.Group // one settlement lookup per key at a time, however many calls wait on it
}

type authEntry struct {
	account *p2p.AccountInfo // nil: settlement said the key is unknown, or a node's (nodeKey)
	nodeKey bool
	grant   *p2p.Grant // lets this gateway bill the account
	fetched time.Time
	spent   int64 // µcr this gateway charged since fetched
}

func newAuthCache(h *p2p.Host, platform peer.ID, ttl time.Duration) *authCache {
	return &authCache{h: h, platform: platform, ttl: ttl, entries: map[[32]byte]*authEntry{}, revoked: map[[32]byte]time.Time{}}
}

// revoke forgets the keys with these SHA-256 sums and refuses them from now
// on, whatever a lookup already in flight returns.
func (a *authCache) revoke(sums [][32]byte, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for at, s := range a.revoked {
		if now.Sub(s) > staleAuth {
			delete(a.revoked, at)
		}
	}
	for _, sum := range sums {
		delete(a.entries, sum)
		a.revoked[sum] = now
	}
}

// check returns the key's account and the balance this gateway believes it
// has (settled balance minus what it charged since it last asked).
func (a *authCache) check(ctx context.Context, key string) (auth, error) {
	sum := sha256.Sum256([]byte(key))
	a.mu.Lock()
	if _, ok := a.revoked[sum]; ok {
		a.mu.Unlock()
		return auth{}, errUnknownKey
	}
	e := a.entries[sum]
	if e != nil && time.Since(e.fetched) < a.ttl {
		defer a.mu.Unlock()
		if e.nodeKey {
			return auth{}, errNodeKey
		}
		if e.account == nil {
			return auth{}, errUnknownKey
		}
		return auth{e.account.Account, e.account.BalanceUcr - e.spent, e.grant}, nil
	}
	a.mu.Unlock()
	type fetched struct {
		info  *p2p.AccountInfo
		grant *p2p.Grant
	}
	v, err, _ := a.flight.Do(string(sum[:]), func() (any, error) {
		info, grant, err := a.fetch(ctx, key)
		return fetched{info, grant}, err
	})
	f, _ := v.(fetched)
	info, grant := f.info, f.grant
	if err != nil && !errors.Is(err, errUnknownKey) && !errors.Is(err, errNodeKey) {
		// Settlement is out of reach: a key it confirmed recently still
		// spends on its credit line (the line itself bounds the spending),
		// unless it was revoked meanwhile (revoke drops the entry).
		a.mu.Lock()
		defer a.mu.Unlock()
		if _, revoked := a.revoked[sum]; revoked {
			return auth{}, errUnknownKey
		}
		if e != nil && a.entries[sum] == e && e.account != nil && time.Since(e.fetched) < staleAuth {
			return auth{e.account.Account, e.account.BalanceUcr - e.spent, e.grant}, nil
		}
		return auth{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.revoked[sum]; ok {
		return auth{}, errUnknownKey // revoked while settlement was asked
	}
	if len(a.entries) > 100_000 {
		clear(a.entries) // bounded; a cleared cache only costs a lookup
	}
	nodeKey := errors.Is(err, errNodeKey)
	a.entries[sum] = &authEntry{account: info, grant: grant, fetched: time.Now(), nodeKey: nodeKey}
	if nodeKey {
		return auth{}, errNodeKey
	}
	if info == nil {
		return auth{}, errUnknownKey
	}
	return auth{info.Account, info.BalanceUcr, grant}, nil
}

// auth is what a checked API key gives a call.
type auth struct {
	account string
	balance int64      // what this gateway believes is left
	grant   *p2p.Grant // goes in the call's receipt
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

// fetch asks settlement for the key's account and a grant to bill it;
// errUnknownKey when the key is unknown.
func (a *authCache) fetch(ctx context.Context, key string) (*p2p.AccountInfo, *p2p.Grant, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := a.h.CallSettle(cctx, a.platform, &p2p.SettleRequest{Op: p2p.OpAccount, APIKey: key})
	var rpcErr *p2p.RPCError
	if errors.As(err, &rpcErr) && rpcErr.Code == p2p.CodeUnknownKey {
		return nil, nil, errUnknownKey
	}
	if errors.As(err, &rpcErr) && rpcErr.Code == p2p.CodeKeyScope {
		return nil, nil, errNodeKey
	}
	if err != nil {
		return nil, nil, err
	}
	if resp.Account == nil || resp.Grant == nil {
		return nil, nil, errors.New("gateway: settlement answered without an account and grant")
	}
	return resp.Account, resp.Grant, nil
}
