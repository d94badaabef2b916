package p2p

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
)

// TopicHealth carries the settlement peer's signed health scores.
const TopicHealth = "tokenrouter/health/1"

// MaxScoresPerReport bounds one health message (about 150 bytes a score,
// well under GossipSub's 1 MiB); larger score sets go in several messages.
const MaxScoresPerReport = 2000

// MaxGossipMessage is the largest message GossipSub carries on any topic.
const MaxGossipMessage = 1 << 20

// MaxHealthAge is how old a health report may be before it is ignored.
const MaxHealthAge = time.Minute

// HealthReport is a batch of scores published by the settlement peer.
// GossipSub's strict signing binds it to the platform's key; validators
// accept it only from the platform they trust.
type HealthReport struct {
	TimeMs    int64           `json:"time_ms"`
	Seq       uint64          `json:"seq"`
	RampStart float64         `json:"ramp_start"` // ramp of an instance not scored yet
	Scores    []InstanceScore `json:"scores"`
	// Refused lists the nodes the platform refuses at the moment, with the
	// reason in words for their operators (a node logs its own). Every
	// message of a report carries the whole list.
	Refused []Refusal `json:"refused,omitempty"`
}

// MaxRefusalsPerReport bounds Refused (a few hundred bytes each).
const MaxRefusalsPerReport = 1000

// Refusal is a node the platform refuses routing to, and why.
type Refusal struct {
	Node    string `json:"node"`
	Status  string `json:"status"` // RefusedDuplicateIdentity
	Reason  string `json:"reason"`
	SinceMs int64  `json:"since_ms"`
}

// RefusedDuplicateIdentity is the status of a node whose peer id two or
// more hosts announce from different addresses (a copied identity key).
const RefusedDuplicateIdentity = "duplicate_identity"

// JoinHealthTopic joins the health topic; only reports published by
// platform pass its validator (platform "" accepts any signer: the
// settlement peer itself, which publishes).
func JoinHealthTopic(h *Host, platform peer.ID, now func() time.Time) (*pubsub.Topic, error) {
	if now == nil {
		now = time.Now
	}
	return h.topic(TopicHealth, func() pubsub.ValidatorEx { return healthValidator(platform, now) })
}

func healthValidator(platform peer.ID, now func() time.Time) pubsub.ValidatorEx {
	var mu sync.Mutex
	last := map[peer.ID]uint64{}
	return func(_ context.Context, _ peer.ID, m *pubsub.Message) pubsub.ValidationResult {
		from := m.GetFrom()
		if platform != "" && from != platform {
			return pubsub.ValidationReject // only the platform scores
		}
		var r HealthReport
		if len(m.Data) > MaxGossipMessage || json.Unmarshal(m.Data, &r) != nil {
			return pubsub.ValidationReject
		}
		age := now().Sub(time.UnixMilli(r.TimeMs))
		if age > MaxHealthAge || age < -MaxHealthAge {
			return pubsub.ValidationIgnore
		}
		mu.Lock()
		defer mu.Unlock()
		if r.Seq <= last[from] {
			return pubsub.ValidationIgnore
		}
		last[from] = r.Seq
		m.ValidatorData = &r
		return pubsub.ValidationAccept
	}
}
