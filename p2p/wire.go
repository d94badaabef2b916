package p2p

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// InferRequest opens a /tokenrouter/infer/1 stream. The OpenAI body follows
// in a FrameBody frame.
type InferRequest struct {
	RequestID string `json:"request_id"`
	Path      string `json:"path"` // upstream path, e.g. "/chat/completions"
	Model     string `json:"model"`
	Stream    bool   `json:"stream"`
	// Grant and Hold are what the gateway bills this call against: the
	// settlement peer's grant that it presented a key of the consumer's
	// account, and its credit-line hold. The node reports its claim with
	// them (OpClaims), so the call is paid even if the gateway never sends
	// its receipt; a node can only ever charge an account whose grant a
	// gateway showed it.
	Grant *Grant `json:"grant,omitempty"`
	Hold  string `json:"hold,omitempty"`
}

// InferHeader is the node's first answer: the upstream status. A 429 means
// the node is full (not a failure); 5xx or NodeFault is a node failure;
// other 4xx are the consumer's doing and neutral.
type InferHeader struct {
	Status int    `json:"status"`
	Node   string `json:"node"`
	// NodeFault marks an error that is the node's own (its engine is down,
	// refused the node's credentials, lacks the model): never the consumer's.
	NodeFault bool `json:"node_fault,omitempty"`
}

// Trailer ends a successful call: what the node claims it served, with the
// node's MAC for the settlement peer (see ClaimAuth).
type Trailer struct {
	Claim NodeClaim `json:"claim"`
	MAC   []byte    `json:"mac"`
}

// NodeClaim is what a node vouches for about one call it served.
type NodeClaim struct {
	RequestID        string `json:"request_id"`
	Model            string `json:"model"`
	Node             string `json:"node"`
	Gateway          string `json:"gateway"`
	PromptTokens     int64  `json:"prompt_tokens"`
	CompletionTokens int64  `json:"completion_tokens"`
	Estimated        bool   `json:"estimated,omitempty"`  // the engine reported no usage; counted by the node
	Incomplete       bool   `json:"incomplete,omitempty"` // the engine broke off mid-answer
}

// Domain-separation prefixes for everything a peer key signs.
const (
	claimDomain    = "tokenrouter/node-claim/1\n"
	receiptDomain  = "tokenrouter/receipt/1\n"
	registerDomain = "tokenrouter/register-node/1\n"
	grantDomain    = "tokenrouter/grant/1\n"
)

// SigningBytes is the exact byte string a node signs for this claim: a
// compact length-prefixed encoding of every field (cheap to build: every
// receipt's is hashed at intake).
func (c NodeClaim) SigningBytes() []byte {
	return c.appendSigning(append(make([]byte, 0, 256), claimDomain...))
}

func (c NodeClaim) appendSigning(b []byte) []byte {
	b = appendStr(b, c.RequestID)
	b = appendStr(b, c.Model)
	b = appendStr(b, c.Node)
	b = appendStr(b, c.Gateway)
	b = binary.AppendVarint(b, c.PromptTokens)
	b = binary.AppendVarint(b, c.CompletionTokens)
	return append(b, boolByte(c.Estimated), boolByte(c.Incomplete))
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// Receipt is the record of one paid call that a gateway sends to settlement.
// It carries the node's claim and its MAC; billed tokens never exceed it.
type Receipt struct {
	RequestID        string        `json:"request_id"`
	Model            string        `json:"model"`
	Consumer         string        `json:"consumer"` // the paying account
	Node             string        `json:"node"`     // the serving node's peer id
	Gateway          string        `json:"gateway"`  // the gateway's peer id
	PromptTokens     int64         `json:"prompt_tokens"`
	CompletionTokens int64         `json:"completion_tokens"` // delivered, <= Claim.CompletionTokens
	Price            economy.Price `json:"price"`
	CostUcr          int64         `json:"cost_ucr"`
	TimeMs           int64         `json:"time_ms"`
	Claim            NodeClaim     `json:"claim"`
	NodeMAC          []byte        `json:"node_mac"`       // the node's ClaimAuth MAC of Claim
	Grant            *Grant        `json:"grant"`          // proof the gateway held one of Consumer's API keys
	Hold             string        `json:"hold,omitempty"` // the credit-line hold the call was spent against
	// GatewaySig is set only on a receipt sent on its own (OpReceipt):
	// receipts in a ReceiptBatch are covered by the batch's one signature,
	// which is how gateways send them.
	GatewaySig []byte `json:"gateway_sig,omitempty"`
}

// Grant is the settlement peer's signed statement that a gateway presented
// an API key of an account: only that gateway may bill that account, and
// only for calls made before the grant expires.
type Grant struct {
	Account   string `json:"account"`
	Gateway   string `json:"gateway"`
	ExpiresMs int64  `json:"expires_ms"`
	Sig       []byte `json:"sig"`
}

func (g *Grant) signingBytes() []byte {
	return fmt.Appendf([]byte(grantDomain), "%s\n%s\n%d", g.Account, g.Gateway, g.ExpiresMs)
}

// Sign signs the grant with the settlement peer's key.
func (g *Grant) Sign(key crypto.PrivKey) error {
	sig, err := key.Sign(g.signingBytes())
	g.Sig = sig
	return err
}

// Verify checks the grant was signed by pub.
func (g *Grant) Verify(pub crypto.PubKey) error {
	ok, err := pub.Verify(g.signingBytes(), g.Sig)
	if err != nil || !ok {
		return fmt.Errorf("grant: %w", ErrBadSignature)
	}
	return nil
}

// Errors from receipt checks.
var (
	ErrBadSignature = errors.New("p2p: bad signature")
	ErrBadReceipt   = errors.New("p2p: inconsistent receipt")
)

// SigningBytes is the exact byte string a gateway signs: every field of
// the receipt but the signatures, compactly encoded. It is also the
// receipt's idempotency payload. The node's signature is not part of it: it
// is checked against the claim, per receipt or through a ClaimBatch, and
// either way the payload is the same.
func (r *Receipt) SigningBytes() []byte {
	b := r.appendCore(append(make([]byte, 0, 512), receiptDomain...))
	if g := r.Grant; g != nil {
		b = append(b, 1)
		b = appendStr(b, g.Account)
		b = appendStr(b, g.Gateway)
		b = binary.AppendVarint(b, g.ExpiresMs)
		b = appendStr(b, string(g.Sig))
	} else {
		b = append(b, 0)
	}
	return appendStr(b, r.Hold)
}

// appendCore appends the receipt's fields up to and including the claim,
// in the layout both the signing bytes and the wire codec use.
func (r *Receipt) appendCore(b []byte) []byte {
	b = appendStr(b, r.RequestID)
	b = appendStr(b, r.Model)
	b = appendStr(b, r.Consumer)
	b = appendStr(b, r.Node)
	b = appendStr(b, r.Gateway)
	b = binary.AppendVarint(b, r.PromptTokens)
	b = binary.AppendVarint(b, r.CompletionTokens)
	b = binary.AppendVarint(b, r.Price.InputPer1M)
	b = binary.AppendVarint(b, r.Price.OutputPer1M)
	b = binary.AppendVarint(b, r.CostUcr)
	b = binary.AppendVarint(b, r.TimeMs)
	return r.Claim.appendSigning(b)
}

// Sign sets GatewaySig with the gateway's key.
func (r *Receipt) Sign(key crypto.PrivKey) error {
	sig, err := key.Sign(r.SigningBytes())
	if err != nil {
		return err
	}
	r.GatewaySig = sig
	return nil
}

// Verify checks the node's claim MAC (with v, the settlement peer's
// verifier), the gateway's own signature and that the receipt agrees with
// the claim (see CheckClaim).
func (r *Receipt) Verify(v *ClaimVerifier) error {
	if err := r.CheckClaim(); err != nil {
		return err
	}
	if err := v.Verify(r.Claim, r.NodeMAC); err != nil {
		return err
	}
	return r.VerifyGateway()
}

// CheckClaim checks the receipt agrees with the node's claim: same call,
// billed tokens not above what the node claimed.
func (r *Receipt) CheckClaim() error {
	c := r.Claim
	if c.RequestID != r.RequestID || c.Model != r.Model || c.Node != r.Node || c.Gateway != r.Gateway {
		return fmt.Errorf("%w: claim is for another call", ErrBadReceipt)
	}
	if r.PromptTokens < 0 || r.CompletionTokens < 0 || r.CostUcr < 0 {
		return fmt.Errorf("%w: negative amounts", ErrBadReceipt)
	}
	if r.PromptTokens > c.PromptTokens || r.CompletionTokens > c.CompletionTokens {
		return fmt.Errorf("%w: billed tokens exceed the node's claim", ErrBadReceipt)
	}
	return nil
}

// VerifyGateway checks the gateway's signature on the receipt.
func (r *Receipt) VerifyGateway() error {
	if err := verifyBy(r.Gateway, r.SigningBytes(), r.GatewaySig); err != nil {
		return fmt.Errorf("gateway signature: %w", err)
	}
	return nil
}

func verifyBy(peerID string, data, sig []byte) error {
	pub, err := pubKeys.get(peerID)
	if err != nil {
		return err
	}
	ok, err := pub.Verify(data, sig)
	if err != nil || !ok {
		return ErrBadSignature
	}
	return nil
}

// pubKeys remembers the public key inside each peer id seen lately: every
// claim and receipt check needs one, and decoding it from the id's base58
// text costs more than a map lookup.
var pubKeys = pubKeyCache{keys: map[string]crypto.PubKey{}}

// maxPubKeys bounds the cache; past it, it starts over.
const maxPubKeys = 100_000

type pubKeyCache struct {
	mu   sync.RWMutex
	keys map[string]crypto.PubKey
}

func (c *pubKeyCache) get(peerID string) (crypto.PubKey, error) {
	c.mu.RLock()
	pub, ok := c.keys[peerID]
	c.mu.RUnlock()
	if ok {
		return pub, nil
	}
	id, err := peer.Decode(peerID)
	if err != nil {
		return nil, fmt.Errorf("%w: bad peer id: %v", ErrBadSignature, err)
	}
	pub, err = id.ExtractPublicKey()
	if err != nil {
		return nil, fmt.Errorf("%w: no public key in peer id: %v", ErrBadSignature, err)
	}
	c.mu.Lock()
	if len(c.keys) >= maxPubKeys {
		clear(c.keys)
	}
	c.keys[peerID] = pub
	c.mu.Unlock()
	return pub, nil
}

// NodeRegistration links a node's peer id to the account owning an API key.
// The node signs it with its peer key.
type NodeRegistration struct {
	Node    string `json:"node"`
	APIKey  string `json:"api_key"` // travels only on the encrypted stream to the settlement peer
	TimeMs  int64  `json:"time_ms"`
	NodeSig []byte `json:"node_sig"`
}

func (r *NodeRegistration) signingBytes() []byte {
	sum := sha256.Sum256([]byte(r.APIKey))
	return fmt.Appendf([]byte(registerDomain), "%s\n%s\n%d", r.Node, hex.EncodeToString(sum[:]), r.TimeMs)
}

// Sign signs the registration with the node's key.
func (r *NodeRegistration) Sign(key crypto.PrivKey) error {
	sig, err := key.Sign(r.signingBytes())
	r.NodeSig = sig
	return err
}

// Verify checks the node's signature.
func (r *NodeRegistration) Verify() error { return verifyBy(r.Node, r.signingBytes(), r.NodeSig) }
