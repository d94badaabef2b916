package p2p

import (
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"math/big"
	"sync"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Claim authentication. A node vouches for each claim to the settlement
// peer with an HMAC-SHA256 under a key only the two of them can derive: the
// X25519 agreement of their Ed25519 peer keys (converted as libsodium's
// crypto_sign_ed25519_{sk,pk}_to_curve25519 do), through HKDF. An HMAC costs
// about a microsecond where an Ed25519 signature cost the node 10-16% of
// its CPU, one per call. The gateway that relays the claim cannot forge or
// alter it (it does not know the key), and settlement checks it before it
// pays. Claim batches (ClaimBatch) stay Ed25519 signatures: one per batch,
// checkable by anyone; the per-claim MAC is what settlement falls back on
// when a node could not be reached to sign a batch.

// ClaimMACSize is the length of a claim's MAC.
const ClaimMACSize = sha256.Size

const claimMACInfo = "tokenrouter/claim-mac/1\n"

// ErrNotEd25519 is returned for a peer key of another type: claim MACs need
// Ed25519 identities (the only kind this network creates).
var ErrNotEd25519 = errors.New("p2p: claim MACs need an Ed25519 peer key")

// ClaimAuth computes and checks the MACs of one node's claims for one
// settlement peer. Both sides derive the same key: the node from its
// private key and the platform's id, the platform from its private key and
// the node's id.
type ClaimAuth struct {
	key [32]byte
}

// NewClaimAuth derives the claim key between own (this peer's private key)
// and other (the peer at the far end). node and platform name the two
// peers in their roles, so a key between the same two peers in the other
// roles differs.
func NewClaimAuth(own crypto.PrivKey, other, node, platform peer.ID) (*ClaimAuth, error) {
	scalar, err := x25519Scalar(own)
	if err != nil {
		return nil, err
	}
	pub, err := other.ExtractPublicKey()
	if err != nil {
		return nil, fmt.Errorf("p2p: no public key in peer id %s: %w", other, err)
	}
	u, err := x25519Public(pub)
	if err != nil {
		return nil, err
	}
	priv, err := ecdh.X25519().NewPrivateKey(scalar)
	if err != nil {
		return nil, err
	}
	peerPub, err := ecdh.X25519().NewPublicKey(u)
	if err != nil {
		return nil, err
	}
	shared, err := priv.ECDH(peerPub)
	if err != nil {
		return nil, fmt.Errorf("p2p: claim key agreement: %w", err)
	}
	key, err := hkdf.Key(sha256.New, shared, nil, claimMACInfo+node.String()+"\n"+platform.String(), 32)
	if err != nil {
		return nil, err
	}
	a := &ClaimAuth{}
	copy(a.key[:], key)
	return a, nil
}

// MAC returns the claim's MAC.
func (a *ClaimAuth) MAC(c NodeClaim) []byte {
	m := hmac.New(sha256.New, a.key[:])
	m.Write(c.SigningBytes())
	return m.Sum(make([]byte, 0, ClaimMACSize))
}

// Check reports whether mac is the claim's MAC (in constant time).
func (a *ClaimAuth) Check(c NodeClaim, mac []byte) bool {
	return hmac.Equal(a.MAC(c), mac)
}

// x25519Scalar is the X25519 private scalar of an Ed25519 private key: the
// first half of SHA-512 over its seed (X25519 clamps it).
func x25519Scalar(k crypto.PrivKey) ([]byte, error) {
	if k.Type() != crypto.Ed25519 {
		return nil, ErrNotEd25519
	}
	raw, err := k.Raw()
	if err != nil || len(raw) < 32 {
		return nil, fmt.Errorf("p2p: read private key: %v", err)
	}
	h := sha512.Sum512(raw[:32])
	return h[:32], nil
}

// curveP is the field prime of Curve25519, 2^255 - 19.
var curveP = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))

// x25519Public is the Montgomery u-coordinate of an Ed25519 public key:
// u = (1 + y) / (1 - y) mod p.
func x25519Public(k crypto.PubKey) ([]byte, error) {
	if k.Type() != crypto.Ed25519 {
		return nil, ErrNotEd25519
	}
	raw, err := k.Raw()
	if err != nil || len(raw) != 32 {
		return nil, fmt.Errorf("p2p: read public key: %v", err)
	}
	le := [32]byte(raw)
	le[31] &= 0x7f // the top bit is the sign of x
	y := new(big.Int).SetBytes(reverse(le[:]))
	if y.Cmp(curveP) >= 0 {
		return nil, errors.New("p2p: public key is not a canonical point")
	}
	den := new(big.Int).Sub(big.NewInt(1), y)
	den.Mod(den, curveP)
	if den.Sign() == 0 {
		return nil, errors.New("p2p: public key is the identity point")
	}
	u := new(big.Int).Add(big.NewInt(1), y)
	u.Mul(u, den.ModInverse(den, curveP))
	u.Mod(u, curveP)
	out := make([]byte, 32)
	u.FillBytes(out)
	return reverse(out), nil
}

func reverse(b []byte) []byte {
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return b
}

// ClaimVerifier checks claim MACs on the settlement peer, keeping each
// node's derived key (one X25519 agreement per node, not per claim).
type ClaimVerifier struct {
	key      crypto.PrivKey
	platform peer.ID

	mu   sync.RWMutex
	auth map[string]*ClaimAuth
}

// NewClaimVerifier checks claims made for the platform whose key is key.
func NewClaimVerifier(key crypto.PrivKey) (*ClaimVerifier, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &ClaimVerifier{key: key, platform: id, auth: map[string]*ClaimAuth{}}, nil
}

// Verify checks mac is c.Node's MAC of c.
func (v *ClaimVerifier) Verify(c NodeClaim, mac []byte) error {
	v.mu.RLock()
	a, ok := v.auth[c.Node]
	v.mu.RUnlock()
	if !ok {
		node, err := peer.Decode(c.Node)
		if err != nil {
			return fmt.Errorf("node claim: %w: bad peer id: %v", ErrBadSignature, err)
		}
		if a, err = NewClaimAuth(v.key, node, node, v.platform); err != nil {
			return fmt.Errorf("node claim: %w: %v", ErrBadSignature, err)
		}
		v.mu.Lock()
		if len(v.auth) >= maxPubKeys {
			clear(v.auth)
		}
		v.auth[c.Node] = a
		v.mu.Unlock()
	}
	if !a.Check(c, mac) {
		return fmt.Errorf("node claim: %w", ErrBadSignature)
	}
	return nil
}
