package p2p

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Batch signatures. An Ed25519 verification costs about 50 µs here, so one
// per receipt and party would cap settlement near 20,000 receipts/s per
// core. Instead a node signs many of its claims at once (ClaimBatch, asked
// for by the gateway) and a gateway signs a whole batch of receipts
// (ReceiptBatch): settlement verifies one signature per batch and a hash
// per receipt. A node that cannot be reached to sign a batch is covered by
// the MAC of each of its claims (ClaimAuth); a gateway sends receipts only
// in batches, so its receipts carry no signature of their own.

// ProtoClaims is how a gateway asks a node to sign a batch of its claims.
const ProtoClaims = "/tokenrouter/claims/1"

// MaxClaimsPerBatch bounds one claim batch.
const MaxClaimsPerBatch = 4096

const (
	claimBatchDomain   = "tokenrouter/claim-batch/1\n"
	receiptBatchDomain = "tokenrouter/receipt-batch/1\n"
)

// ErrUnknownClaims is a node's answer when asked to sign claims it did not make.
var ErrUnknownClaims = errors.New("p2p: the node does not know some of these claims")

// Hash identifies a claim in a batch.
func (c NodeClaim) Hash() [32]byte { return sha256.Sum256(c.SigningBytes()) }

// ClaimBatch is a node's one signature over many claims it made for one gateway.
type ClaimBatch struct {
	Node    string `json:"node"`
	Gateway string `json:"gateway"`
	Hashes  []byte `json:"hashes"` // the claims' Hash values, concatenated
	Sig     []byte `json:"sig"`
}

func (b *ClaimBatch) signingBytes() []byte {
	sum := sha256.Sum256(b.Hashes)
	return fmt.Appendf([]byte(claimBatchDomain), "%s\n%s\n%x", b.Node, b.Gateway, sum)
}

// SignClaimBatch signs the given claim hashes as node for gateway.
func SignClaimBatch(key crypto.PrivKey, node, gateway string, hashes [][32]byte) (*ClaimBatch, error) {
	b := &ClaimBatch{Node: node, Gateway: gateway, Hashes: make([]byte, 0, 32*len(hashes))}
	for _, h := range hashes {
		b.Hashes = append(b.Hashes, h[:]...)
	}
	sig, err := key.Sign(b.signingBytes())
	b.Sig = sig
	return b, err
}

// Verify checks the node's signature and the batch's shape.
func (b *ClaimBatch) Verify() error {
	if len(b.Hashes)%32 != 0 || len(b.Hashes)/32 > MaxClaimsPerBatch {
		return fmt.Errorf("%w: malformed claim batch", ErrBadReceipt)
	}
	if err := verifyBy(b.Node, b.signingBytes(), b.Sig); err != nil {
		return fmt.Errorf("claim batch: %w", err)
	}
	return nil
}

// Set returns the batch's claim hashes as a set.
func (b *ClaimBatch) Set() map[[32]byte]struct{} {
	m := make(map[[32]byte]struct{}, len(b.Hashes)/32)
	for i := 0; i+32 <= len(b.Hashes); i += 32 {
		m[[32]byte(b.Hashes[i:i+32])] = struct{}{}
	}
	return m
}

// ReceiptBatch is what a gateway sends settlement: receipts, the claim
// batches their nodes signed, which batch covers which receipt (Refs[i],
// -1 for none: then the receipt's NodeMAC counts), and one gateway
// signature over all of it.
type ReceiptBatch struct {
	Gateway  string        `json:"gateway"`
	Receipts []*Receipt    `json:"receipts"`
	Claims   []*ClaimBatch `json:"claims,omitempty"`
	Refs     []int         `json:"refs"`
	Sig      []byte        `json:"sig"`
}

func (b *ReceiptBatch) digest() []byte { return b.digestOf(nil) }

// digestOf is digest with the receipts' signing bytes already computed
// (payloads[i] == Receipts[i].SigningBytes(), or nil to compute them).
func (b *ReceiptBatch) digestOf(payloads [][]byte) []byte {
	h := sha256.New()
	h.Write([]byte(receiptBatchDomain))
	h.Write([]byte(b.Gateway))
	for i, r := range b.Receipts {
		var sb []byte
		if payloads != nil {
			sb = payloads[i]
		} else {
			sb = r.SigningBytes()
		}
		sum := sha256.Sum256(sb)
		h.Write(sum[:])
	}
	for _, c := range b.Claims {
		h.Write(c.signingBytes())
		h.Write(c.Sig)
	}
	for _, ref := range b.Refs {
		fmt.Fprintf(h, ",%d", ref)
	}
	return h.Sum(nil)
}

// Sign signs the batch with the gateway's key.
func (b *ReceiptBatch) Sign(key crypto.PrivKey) error {
	sig, err := key.Sign(b.digest())
	b.Sig = sig
	return err
}

// VerifyGateway checks the gateway's signature and the batch's shape.
func (b *ReceiptBatch) VerifyGateway() error { return b.VerifyGatewayPayloads(nil) }

// VerifyGatewayPayloads is VerifyGateway given every receipt's signing
// bytes (computed once by a caller that needs them anyway); nil computes them.
func (b *ReceiptBatch) VerifyGatewayPayloads(payloads [][]byte) error {
	if payloads != nil && len(payloads) != len(b.Receipts) {
		return fmt.Errorf("%w: %d payloads for %d receipts", ErrBadReceipt, len(payloads), len(b.Receipts))
	}
	for _, r := range b.Receipts {
		if r == nil {
			return fmt.Errorf("%w: a null receipt", ErrBadReceipt)
		}
	}
	for _, c := range b.Claims {
		if c == nil {
			return fmt.Errorf("%w: a null claim batch", ErrBadReceipt)
		}
	}
	if len(b.Refs) != len(b.Receipts) {
		return fmt.Errorf("%w: %d refs for %d receipts", ErrBadReceipt, len(b.Refs), len(b.Receipts))
	}
	for _, ref := range b.Refs {
		if ref < -1 || ref >= len(b.Claims) {
			return fmt.Errorf("%w: claim batch reference %d out of range", ErrBadReceipt, ref)
		}
	}
	if err := verifyBy(b.Gateway, b.digestOf(payloads), b.Sig); err != nil {
		return fmt.Errorf("receipt batch: %w", err)
	}
	return nil
}

type claimsRequest struct {
	Hashes []byte `json:"hashes"`
}

type claimsReply struct {
	Batch *ClaimBatch `json:"batch,omitempty"`
	Error string      `json:"error,omitempty"`
}

// ServeClaims answers gateways asking this node to sign claims it made for
// them, with key (nil = the host's key); known reports whether a hash is a
// claim it made for gateway.
func ServeClaims(h *Host, key crypto.PrivKey, known func(gateway string, hash [32]byte) bool) {
	if key == nil {
		key = h.Key
	}
	h.SetStreamHandler(ProtoClaims, func(s network.Stream) {
		defer recoverStream(s, h)
		defer s.Close()
		s.SetDeadline(time.Now().Add(10 * time.Second))
		_, payload, err := ReadFrame(bufio.NewReader(s), nil, 32*MaxClaimsPerBatch+1024)
		if err != nil {
			s.Reset()
			return
		}
		gw := s.Conn().RemotePeer().String()
		var req claimsRequest
		var reply claimsReply
		switch {
		case json.Unmarshal(payload, &req) != nil || len(req.Hashes)%32 != 0 || len(req.Hashes) == 0:
			reply.Error = "malformed request"
		default:
			hashes := make([][32]byte, 0, len(req.Hashes)/32)
			for i := 0; i < len(req.Hashes); i += 32 {
				hh := [32]byte(req.Hashes[i : i+32])
				if !known(gw, hh) {
					reply.Error = ErrUnknownClaims.Error()
					break
				}
				hashes = append(hashes, hh)
			}
			if reply.Error == "" {
				reply.Batch, err = SignClaimBatch(key, h.ID().String(), gw, hashes)
				if err != nil {
					reply.Batch, reply.Error = nil, "cannot sign"
				}
			}
		}
		out, _ := json.Marshal(reply)
		w := bufio.NewWriter(s)
		if WriteFrame(w, FrameJSON, out) != nil || w.Flush() != nil {
			s.Reset()
		}
	})
}

// RequestClaimBatch asks node to sign the claims with these hashes.
func (h *Host) RequestClaimBatch(ctx context.Context, node peer.ID, hashes [][32]byte) (*ClaimBatch, error) {
	if err := h.Find(ctx, node); err != nil {
		return nil, err
	}
	s, err := h.NewStream(ctx, node, ProtoClaims)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(10 * time.Second))
	req := claimsRequest{Hashes: make([]byte, 0, 32*len(hashes))}
	for _, hh := range hashes {
		req.Hashes = append(req.Hashes, hh[:]...)
	}
	body, _ := json.Marshal(req)
	w := bufio.NewWriter(s)
	if err := WriteFrame(w, FrameJSON, body); err != nil {
		s.Reset()
		return nil, err
	}
	if err := w.Flush(); err != nil {
		s.Reset()
		return nil, err
	}
	_, payload, err := ReadFrame(bufio.NewReader(s), nil, 32*MaxClaimsPerBatch+64<<10)
	if err != nil {
		s.Reset()
		return nil, err
	}
	var reply claimsReply
	if err := json.Unmarshal(payload, &reply); err != nil {
		return nil, err
	}
	if reply.Error != "" || reply.Batch == nil {
		if reply.Error == ErrUnknownClaims.Error() {
			return nil, ErrUnknownClaims
		}
		return nil, fmt.Errorf("node refused to sign claims: %s", reply.Error)
	}
	if err := reply.Batch.Verify(); err != nil {
		return nil, err
	}
	if reply.Batch.Node != node.String() || reply.Batch.Gateway != h.ID().String() || len(reply.Batch.Hashes) != len(req.Hashes) {
		return nil, fmt.Errorf("%w: the node signed another batch", ErrBadReceipt)
	}
	return reply.Batch, nil
}
