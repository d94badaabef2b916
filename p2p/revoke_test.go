package p2p

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Only the platform can revoke keys at a gateway, and only well-formed
// hashes; the platform's revocation is applied before it is acknowledged.
func TestServeRevoke(t *testing.T) {
	gw, platform, stranger := newTestHost(t), newTestHost(t), newTestHost(t)
	var applied atomic.Int32
	ServeRevoke(gw, platform.ID(), func(r *KeyRevocation) { applied.Add(int32(len(r.KeyHashes))) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, h := range []*Host{platform, stranger} {
		if err := h.Connect(ctx, peer.AddrInfo{ID: gw.ID(), Addrs: gw.Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	good := &KeyRevocation{TimeMs: time.Now().UnixMilli(), KeyHashes: []string{strings.Repeat("ab", 32)}}
	if err := stranger.SendRevoke(ctx, gw.ID(), good); err == nil || applied.Load() != 0 {
		t.Fatalf("a stranger's revocation: err %v, applied %d", err, applied.Load())
	}
	bad := &KeyRevocation{TimeMs: time.Now().UnixMilli(), KeyHashes: []string{"not-a-hash"}}
	if err := platform.SendRevoke(ctx, gw.ID(), bad); err == nil || applied.Load() != 0 {
		t.Fatalf("a malformed revocation: err %v, applied %d", err, applied.Load())
	}
	if err := platform.SendRevoke(ctx, gw.ID(), good); err != nil || applied.Load() != 1 {
		t.Fatalf("the platform's revocation: err %v, applied %d", err, applied.Load())
	}
}
