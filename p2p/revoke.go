package p2p

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// TopicRevoked carries the settlement peer's API key revocations, so every
// gateway stops honouring a revoked key at once rather than when its cached
// check expires.
const TopicRevoked = "tokenrouter/revoked/1"

// MaxRevokedPerMessage bounds one revocation message.
const MaxRevokedPerMessage = 1000

// KeyRevocation names revoked API keys by the hex SHA-256 the ledger and the
// gateways' caches know them by. The hash of a random 256-bit key tells a
// reader nothing of the key or of its account.
type KeyRevocation struct {
	TimeMs    int64    `json:"time_ms"`
	KeyHashes []string `json:"key_hashes"`
}

// JoinRevokedTopic joins the revocation topic; only messages published by
// platform pass its validator (platform "" accepts any signer: the
// settlement peer itself, which publishes).
func JoinRevokedTopic(h *Host, platform peer.ID, now func() time.Time) (*pubsub.Topic, error) {
	if now == nil {
		now = time.Now
	}
	return h.topic(TopicRevoked, func() pubsub.ValidatorEx { return revokedValidator(platform, now) })
}

func revokedValidator(platform peer.ID, now func() time.Time) pubsub.ValidatorEx {
	return func(_ context.Context, _ peer.ID, m *pubsub.Message) pubsub.ValidationResult {
		if platform != "" && m.GetFrom() != platform {
			return pubsub.ValidationReject // only the platform revokes
		}
		var r KeyRevocation
		if len(m.Data) > MaxGossipMessage || json.Unmarshal(m.Data, &r) != nil ||
			len(r.KeyHashes) == 0 || len(r.KeyHashes) > MaxRevokedPerMessage {
			return pubsub.ValidationReject
		}
		for _, h := range r.KeyHashes {
			if b, err := hex.DecodeString(h); err != nil || len(b) != 32 {
				return pubsub.ValidationReject
			}
		}
		if age := now().Sub(time.UnixMilli(r.TimeMs)); age > MaxHealthAge || age < -MaxHealthAge {
			return pubsub.ValidationIgnore
		}
		m.ValidatorData = &r
		return pubsub.ValidationAccept
	}
}

// ProtoRevoke is how the platform tells a gateway it is connected to of a
// revocation and waits for it to take effect: the gossip topic reaches
// every gateway, this makes "revoked" true on the connected ones by the time
// the revoking call returns.
const ProtoRevoke = "/tokenrouter/revoke/1"

// ServeRevoke answers the platform's revocations with apply, then an empty
// acknowledgement frame. Streams from any other peer are reset.
func ServeRevoke(h *Host, platform peer.ID, apply func(*KeyRevocation)) {
	h.SetStreamHandler(ProtoRevoke, func(s network.Stream) {
		if s.Conn().RemotePeer() != platform {
			s.Reset()
			return
		}
		s.SetDeadline(time.Now().Add(10 * time.Second))
		_, payload, err := ReadFrame(bufio.NewReader(s), nil, MaxGossipMessage)
		var r KeyRevocation
		if err != nil || json.Unmarshal(payload, &r) != nil || len(r.KeyHashes) > MaxRevokedPerMessage {
			s.Reset()
			return
		}
		for _, k := range r.KeyHashes {
			if b, err := hex.DecodeString(k); err != nil || len(b) != 32 {
				s.Reset()
				return
			}
		}
		apply(&r)
		w := bufio.NewWriter(s)
		if WriteFrame(w, FrameJSON, []byte("{}")) != nil || w.Flush() != nil {
			s.Reset()
			return
		}
		s.Close()
	})
}

// SendRevoke tells one gateway of r and waits for its acknowledgement.
func (h *Host) SendRevoke(ctx context.Context, gw peer.ID, r *KeyRevocation) error {
	s, err := h.NewStream(network.WithNoDial(ctx, "connected gateways only"), gw, ProtoRevoke)
	if err != nil {
		return err
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		s.SetDeadline(dl)
	}
	body, _ := json.Marshal(r)
	w := bufio.NewWriter(s)
	if err := WriteFrame(w, FrameJSON, body); err != nil {
		s.Reset()
		return err
	}
	if err := w.Flush(); err != nil {
		s.Reset()
		return err
	}
	if _, _, err := ReadFrame(bufio.NewReader(s), nil, 1024); err != nil {
		s.Reset()
		return err
	}
	return nil
}
