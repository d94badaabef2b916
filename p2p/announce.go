package p2p

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/nodecore"
)

// TopicLoad carries nodes' load announcements.
const TopicLoad = "tokenrouter/load/1"

// MaxAnnouncement bounds an announcement's size; larger ones are rejected.
const MaxAnnouncement = 64 << 10

// MaxAnnouncementAge is how old (or how far in the future) an announcement may
// be before validators ignore it.
const MaxAnnouncementAge = 10 * time.Second

// Announcement is a node's signed statement of what it serves and how busy
// it is. GossipSub's strict signing binds it to the publishing peer; the
// validator checks Node is that peer, the timestamp is fresh and Seq grows
// (an announcement from other addresses whose Seq does not grow passes as
// a StrayAnnouncement).
type Announcement struct {
	Node string `json:"node"`
	// Platform is the settlement peer the node's claims are for: only
	// gateways that settle there route to it (anywhere else it would serve
	// calls no one can pay it for).
	Platform  string      `json:"platform"`
	Addrs     []string    `json:"addrs"`
	Hardware  string      `json:"hardware,omitempty"`
	Synthetic bool        `json:"synthetic,omitempty"` // served by the synthetic engine
	Models    []ModelLoad `json:"models"`
	TokPerSec float64     `json:"tok_s"` // measured generation rate, 0 until measured
	TimeMs    int64       `json:"time_ms"`
	Seq       uint64      `json:"seq"`
}

// ModelLoad is one instance: a model on a node, its declared capacity
// (concurrent calls) and the calls in flight.
type ModelLoad struct {
	Model    string `json:"model"`
	Capacity int    `json:"capacity"`
	InFlight int    `json:"in_flight"`
	// InFlightBy splits InFlight by the gateway (peer id) that sent the
	// calls, so a gateway can replace its own, stale, share with what it
	// knows now.
	InFlightBy map[string]int `json:"in_flight_by,omitempty"`
}

// StrayAnnouncement is a fresh, validly signed announcement whose sequence
// number is not above the last one accepted from its node (within the
// freshness limit) and whose addresses differ from that one's: another
// process announcing the same peer id (two machines, one copied identity
// key), or a straggler of a restarted node. The validator passes it (as
// ValidatorData) for twin detection only; it says nothing new about the
// node's load.
type StrayAnnouncement struct {
	Announcement
}

// JoinLoadTopic joins the load topic with a validator that drops forged,
// stale, replayed and oversized announcements. now is the clock it checks
// freshness against (nil = time.Now). The topic is shared by every role on
// the host: subscribe to it, do not close it.
func JoinLoadTopic(h *Host, now func() time.Time) (*pubsub.Topic, error) {
	if now == nil {
		now = time.Now
	}
	return h.topic(TopicLoad, func() pubsub.ValidatorEx {
		v := &announceValidator{now: now, last: map[peer.ID]seen{}}
		return v.validate
	})
}

type announceValidator struct {
	now  func() time.Time
	mu   sync.Mutex
	last map[peer.ID]seen
}

type seen struct {
	seq   uint64
	at    time.Time
	addrs string // nodecore.AddrSetKey of its addresses
}

// maxTracked bounds the replay filter; past it, peers silent for longer
// than MaxAnnouncementAge are forgotten (their old messages are stale anyway).
const maxTracked = 100_000

func (v *announceValidator) validate(_ context.Context, _ peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	if len(m.Data) > MaxAnnouncement {
		return pubsub.ValidationReject
	}
	var a Announcement
	if err := json.Unmarshal(m.Data, &a); err != nil {
		return pubsub.ValidationReject
	}
	from := m.GetFrom()
	if a.Node != from.String() {
		return pubsub.ValidationReject // someone speaking for another node
	}
	age := v.now().Sub(time.UnixMilli(a.TimeMs))
	if age > MaxAnnouncementAge || age < -MaxAnnouncementAge {
		return pubsub.ValidationIgnore
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	addrs := nodecore.AddrSetKey(a.Addrs)
	if last, ok := v.last[from]; ok && a.Seq <= last.seq && v.now().Sub(last.at) <= MaxAnnouncementAge {
		if addrs != last.addrs {
			// Another process holding the same key, or a straggler of a
			// restarted one: not news about the node, but twin detectors
			// need to see it (and so do the peers this one forwards to).
			m.ValidatorData = &StrayAnnouncement{Announcement: a}
			return pubsub.ValidationAccept
		}
		return pubsub.ValidationIgnore // replayed or reordered
	}
	// A sequence number at or below the last one is accepted once the
	// process that sent that one has been silent past the freshness limit:
	// a node restarted with its clock set back, or the survivor of two
	// processes that shared a key, starts a new sequence.
	if len(v.last) >= maxTracked {
		for p, s := range v.last {
			if v.now().Sub(s.at) > MaxAnnouncementAge {
				delete(v.last, p)
			}
		}
	}
	v.last[from] = seen{a.Seq, v.now(), addrs}
	m.ValidatorData = &a
	return pubsub.ValidationAccept
}

// InstanceScore is the settlement peer's verdict on one instance: its
// health score (tie-break weight) and ramp-up (fraction of its declared
// capacity it may use), both in (0,1].
type InstanceScore struct {
	Node        string  `json:"node"`
	Model       string  `json:"model"`
	Score       float64 `json:"score"`
	Ramp        float64 `json:"ramp"`
	FirstSeenMs int64   `json:"first_seen_ms"`
}
