package gateway

import (
	"context"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/internal/testkit"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// While settlement is out of reach a recently confirmed key keeps spending
// on its credit line, but a key revoked meanwhile does not.
func TestStaleAuthHonoursRevocation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := p2p.NewHost(ctx, p2p.Config{DataDir: t.TempDir(), Listen: []string{"/ip4/127.0.0.1/tcp/0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	_, gone := testkit.RandomPeer(t) // a settlement peer nobody can reach
	a := newAuthCache(h, gone, time.Millisecond)
	seed := func(key string) {
		a.mu.Lock()
		a.entries[sha256.Sum256([]byte(key))] = &authEntry{
			account: &p2p.AccountInfo{Account: "acct_a", BalanceUcr: 1000}, fetched: time.Now().Add(-time.Second)}
		a.mu.Unlock()
	}
	seed("trk_kept")
	seed("trk_revoked")
	a.revoke([][32]byte{sha256.Sum256([]byte("trk_revoked"))}, time.Now())

	au, err := a.check(ctx, "trk_kept")
	if err != nil || au.account != "acct_a" || au.balance != 1000 {
		t.Fatalf("stale check of a live key = %+v, %v", au, err)
	}
	if _, err := a.check(ctx, "trk_revoked"); !errors.Is(err, errUnknownKey) {
		t.Fatalf("stale check of a revoked key: %v; want errUnknownKey", err)
	}
	// Revoked while the lookup is out: the stale entry must not answer.
	seed("trk_late")
	done := make(chan error, 1)
	go func() { _, err := a.check(ctx, "trk_late"); done <- err }()
	a.revoke([][32]byte{sha256.Sum256([]byte("trk_late"))}, time.Now())
	if err := <-done; err != nil && !errors.Is(err, errUnknownKey) {
		t.Fatalf("check racing a revocation: %v", err)
	}
	if _, err := a.check(ctx, "trk_late"); !errors.Is(err, errUnknownKey) {
		t.Fatalf("after the revocation: %v", err)
	}
}
