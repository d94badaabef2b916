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
// Measured: 64 models idle with 8 addresses marshal to 7.4 KB; with 8
// gateways' calls in flight on every model (512 calls) and 16 addresses,
// 38 KB. InFlightBy dominates (~74 bytes a model a gateway), so this leaves
// room for ~600 such pairs, and bounds what one node can make every gateway
// carry to AnnounceRate × 48 KiB a second.
const MaxAnnouncement = 48 << 10

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
	// EveryMs is the longest the node stays silent before its next
	// announcement (its gossip budget's interval; 0 = the old 3 s
	// heartbeat). A node silent for several of them is gone; a node
	// quieter than MaxAnnouncementAge is not.
	EveryMs int64 `json:"every_ms,omitempty"`
}

// Every is how long a gateway may wait for a's next announcement.
func (a *Announcement) Every() time.Duration {
	if a.EveryMs <= 0 {
		return 3 * time.Second
	}
	return time.Duration(a.EveryMs) * time.Millisecond
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

// The load validator's limits. Which of its verdicts cost the forwarding
// peer score (GossipSub's P4) is explained at NewLoadValidator.
const (
	// StaleSlack: an announcement past MaxAnnouncementAge by less than this
	// is ignored, not rejected. An honest forwarder may have passed it on a
	// moment before it turned stale, or run its clock a second apart.
	StaleSlack = 2 * time.Second
	// ReorderWindow: an announcement superseded by one published at most
	// this long after it (by the node's clock) and accepted at most this
	// long ago is ignored, not rejected. GossipSub validates in parallel and
	// recovers lost messages by gossip at 1 s heartbeats, so an honest path
	// delivers an older announcement up to a few seconds late.
	ReorderWindow = 3 * time.Second
	// AnnounceRate and AnnounceBurst bound the announcements accepted from
	// one node, and the superseded ones its node sends itself: per second
	// sustained, and in a burst. A node announces at most once a second
	// (provider.Config.Announce) and paths clump them; twice that rate and
	// a burst of 4 never drop an honest node's, while a node that floods is
	// held to 2 a second network-wide.
	AnnounceRate  = 2.0
	AnnounceBurst = 4.0
)

// JoinLoadTopic joins the load topic with the load validator
// (NewLoadValidator). now is the clock it checks freshness against
// (nil = time.Now). The topic is shared by every role on the host:
// subscribe to it, do not close it.
func JoinLoadTopic(h *Host, now func() time.Time) (*pubsub.Topic, error) {
	return h.topic(TopicLoad, func() pubsub.ValidatorEx { return newLoadValidator(now, h.ID()) })
}

// NewLoadValidator returns a validator for TopicLoad, to register on any
// PubSub (JoinLoadTopic registers it on a Host's). now is its clock
// (nil = time.Now). An accepted message carries its *Announcement, or a
// *StrayAnnouncement, as ValidatorData.
//
// A rejected message costs the peer that delivered it GossipSub's P4
// penalty; an ignored one costs nothing. Every honest peer runs this
// validator before forwarding, so it rejects only what no honest peer
// forwards, whatever it has seen before:
//   - Reject: larger than MaxAnnouncement; not an announcement, or malformed
//     (a negative count, a nameless model, more calls split by gateway than
//     in flight); signed by another peer than its Node (forged); more than
//     MaxAnnouncementAge+StaleSlack old or ahead (stale); a sequence number
//     not above one accepted from the same addresses, unless it was
//     published at most ReorderWindow before that one and arrives within
//     ReorderWindow of it (replayed: honest forwarders had the newer one by
//     then; a later time with an older number only its node can sign); and
//     superseded ones its node itself sends faster than AnnounceRate.
//   - Ignore: stale within that slack, and superseded within that window,
//     where an honest path may be a moment behind; and a node announcing
//     faster than AnnounceRate, which each peer judges by its own clock and
//     so may judge differently from the peer that forwarded it.
func NewLoadValidator(now func() time.Time) pubsub.ValidatorEx { return newLoadValidator(now, "") }

// newLoadValidator is NewLoadValidator for the host self, whose own
// announcements it does not rate-limit (a node paces its own).
func newLoadValidator(now func() time.Time, self peer.ID) pubsub.ValidatorEx {
	if now == nil {
		now = time.Now
	}
	v := &announceValidator{now: now, self: self, last: map[peer.ID]seen{}}
	return v.validate
}

type announceValidator struct {
	now  func() time.Time
	self peer.ID // "" = unknown: its own announcements are rate-limited too
	mu   sync.Mutex
	last map[peer.ID]seen
}

// seen is what the validator remembers of a node: its last accepted
// announcement, and its rate limits.
type seen struct {
	seq    uint64
	timeMs int64     // its TimeMs
	at     time.Time // when it was accepted
	addrs  string    // nodecore.AddrSetKey of its addresses
	rate   bucket    // announcements accepted
	resent bucket    // superseded announcements its node sent itself
}

// bucket is a token bucket of AnnounceBurst tokens refilled at AnnounceRate.
type bucket struct {
	tokens float64
	filled time.Time
}

// take spends one token at now, if there is one.
func (b *bucket) take(now time.Time) bool {
	if b.filled.IsZero() {
		b.tokens = AnnounceBurst
	} else {
		b.tokens = min(AnnounceBurst, b.tokens+now.Sub(b.filled).Seconds()*AnnounceRate)
	}
	b.filled = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// reordered reports whether a, superseded by s, may be an honest late
// delivery: published at most ReorderWindow before s (both by its
// node's clock, so clock skew cancels out) and arriving within
// ReorderWindow of it.
func (s *seen) reordered(a *Announcement, now time.Time) bool {
	older := time.Duration(s.timeMs-a.TimeMs) * time.Millisecond
	return older >= 0 && older <= ReorderWindow && now.Sub(s.at) <= ReorderWindow
}

// maxTracked bounds the replay filter; past it, peers silent for longer
// than MaxAnnouncementAge are forgotten (their old messages are stale anyway).
const maxTracked = 100_000

func (v *announceValidator) validate(_ context.Context, src peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	a, res := parseAnnouncement(m)
	if res != pubsub.ValidationAccept {
		return res
	}
	now := v.now()
	if res := freshness(now, a.TimeMs); res != pubsub.ValidationAccept {
		return res
	}
	from := m.GetFrom()
	own := v.self != "" && src == v.self // published here, not received
	v.mu.Lock()
	defer v.mu.Unlock()
	addrs := nodecore.AddrSetKey(a.Addrs)
	last, known := v.last[from]
	if known && a.Seq <= last.seq && now.Sub(last.at) <= MaxAnnouncementAge {
		if addrs != last.addrs {
			// Another process holding the same key, or a straggler of a
			// restarted one: not news about the node, but twin detectors
			// need to see it (and so do the peers this one forwards to).
			if !own && !last.rate.take(now) {
				return pubsub.ValidationIgnore
			}
			v.last[from] = last
			m.ValidatorData = &StrayAnnouncement{Announcement: *a}
			return pubsub.ValidationAccept
		}
		if !last.reordered(a, now) {
			return pubsub.ValidationReject // replayed
		}
		if src == from && !own {
			// Its node sent it itself, not a forwarder a path behind: a
			// few are a reordering, a stream of them a flood.
			ok := last.resent.take(now)
			v.last[from] = last
			if !ok {
				return pubsub.ValidationReject
			}
		}
		return pubsub.ValidationIgnore // reordered on the way
	}
	// A sequence number at or below the last one is accepted once the
	// process that sent that one has been silent past the freshness limit:
	// a node restarted with its clock set back, or the survivor of two
	// processes that shared a key, starts a new sequence.
	next := seen{seq: a.Seq, timeMs: a.TimeMs, at: now, addrs: addrs, rate: last.rate, resent: last.resent}
	if !own && !next.rate.take(now) {
		return pubsub.ValidationIgnore
	}
	if len(v.last) >= maxTracked {
		for p, s := range v.last {
			if now.Sub(s.at) > MaxAnnouncementAge {
				delete(v.last, p)
			}
		}
	}
	v.last[from] = next
	m.ValidatorData = a
	return pubsub.ValidationAccept
}

// parseAnnouncement decodes m and checks what needs no memory: its size,
// its form and that its signer is the node it speaks for.
func parseAnnouncement(m *pubsub.Message) (*Announcement, pubsub.ValidationResult) {
	if len(m.Data) > MaxAnnouncement {
		return nil, pubsub.ValidationReject
	}
	var a Announcement
	if err := json.Unmarshal(m.Data, &a); err != nil || !a.wellFormed() {
		return nil, pubsub.ValidationReject
	}
	if a.Node != m.GetFrom().String() {
		return nil, pubsub.ValidationReject // someone speaking for another node
	}
	return &a, pubsub.ValidationAccept
}

// wellFormed reports whether a's counts can be true: none negative, every
// model named, and no more calls split by gateway than in flight. A node
// builds them all under one lock, so an honest one never fails this.
func (a *Announcement) wellFormed() bool {
	if a.TokPerSec < 0 {
		return false
	}
	for _, m := range a.Models {
		if m.Model == "" || m.Capacity < 0 || m.InFlight < 0 {
			return false
		}
		by := 0
		for _, n := range m.InFlightBy {
			if n < 0 {
				return false
			}
			by += n
		}
		if by > m.InFlight {
			return false
		}
	}
	return true
}

// freshness judges an announcement's timestamp at now.
func freshness(now time.Time, timeMs int64) pubsub.ValidationResult {
	age := now.Sub(time.UnixMilli(timeMs)) // negative from the future: a clock ahead, or a forgery
	switch {
	case age > MaxAnnouncementAge+StaleSlack || age < -MaxAnnouncementAge-StaleSlack:
		return pubsub.ValidationReject
	case age > MaxAnnouncementAge || age < -MaxAnnouncementAge:
		return pubsub.ValidationIgnore
	}
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
