package p2p

import (
	"bytes"
	"crypto/ecdh"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
)

// The Ed25519 -> X25519 conversions agree: the u-coordinate computed from
// a public key is the X25519 public key of the scalar computed from its
// private key.
func TestX25519Conversion(t *testing.T) {
	for range 20 {
		k, _ := testkit.RandomPeer(t)
		scalar, err := x25519Scalar(k)
		if err != nil {
			t.Fatal(err)
		}
		priv, err := ecdh.X25519().NewPrivateKey(scalar)
		if err != nil {
			t.Fatal(err)
		}
		u, err := x25519Public(k.GetPublic())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(u, priv.PublicKey().Bytes()) {
			t.Fatalf("u from the public key %x, from the private key %x", u, priv.PublicKey().Bytes())
		}
	}
}

// A node and its settlement peer derive the same claim key, and no one
// else does: not another platform, not the same peers in swapped roles.
func TestClaimAuthAgreement(t *testing.T) {
	nodeKey, node := testkit.RandomPeer(t)
	platKey, plat := testkit.RandomPeer(t)
	_, other := testkit.RandomPeer(t)
	claim := NodeClaim{RequestID: "req_1", Model: "m", Node: node.String(), Gateway: other.String(), PromptTokens: 3, CompletionTokens: 4}

	mustAuth := func(a *ClaimAuth, err error) *ClaimAuth {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	atNode := mustAuth(NewClaimAuth(nodeKey, plat, node, plat))
	atPlatform := mustAuth(NewClaimAuth(platKey, node, node, plat))
	mac := atNode.MAC(claim)
	if len(mac) != ClaimMACSize || !atPlatform.Check(claim, mac) {
		t.Fatalf("the platform does not accept the node's MAC")
	}
	v, err := NewClaimVerifier(platKey)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second time from the verifier's cache
		if err := v.Verify(claim, mac); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	}
	for name, a := range map[string]*ClaimAuth{
		"another platform":  mustAuth(NewClaimAuth(nodeKey, other, node, other)),
		"roles swapped":     mustAuth(NewClaimAuth(nodeKey, plat, plat, node)),
		"another node's id": mustAuth(NewClaimAuth(nodeKey, plat, peer.ID(other), plat)),
	} {
		if bytes.Equal(a.MAC(claim), mac) {
			t.Errorf("%s: same MAC", name)
		}
	}
	changed := claim
	changed.CompletionTokens++
	if atPlatform.Check(changed, mac) || v.Verify(changed, mac) == nil {
		t.Errorf("a changed claim passes with the old MAC")
	}
	if v.Verify(claim, mac[:16]) == nil {
		t.Errorf("a cut MAC passes")
	}
}

func BenchmarkClaimMAC(b *testing.B) {
	nodeKey, node := testkit.RandomPeer(b)
	_, plat := testkit.RandomPeer(b)
	a, err := NewClaimAuth(nodeKey, plat, node, plat)
	if err != nil {
		b.Fatal(err)
	}
	claim := NodeClaim{RequestID: "req_abcdefghijklmnopqrstuvwx", Model: "llama-3.1-8b", Node: node.String(), Gateway: plat.String(), PromptTokens: 300, CompletionTokens: 400}
	for b.Loop() {
		a.MAC(claim)
	}
}

func BenchmarkClaimSignEd25519(b *testing.B) {
	nodeKey, node := testkit.RandomPeer(b)
	claim := NodeClaim{RequestID: "req_abcdefghijklmnopqrstuvwx", Model: "llama-3.1-8b", Node: node.String(), Gateway: node.String(), PromptTokens: 300, CompletionTokens: 400}
	for b.Loop() {
		nodeKey.Sign(claim.SigningBytes())
	}
}
