package p2p

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
)

// Two processes with one key: the one with the lower sequence passes as a
// StrayAnnouncement while the other speaks, and takes over once it is
// silent past the freshness limit.
func TestAnnouncementValidatorStray(t *testing.T) {
	_, from := testkit.RandomPeer(t)
	now := time.UnixMilli(1_700_000_000_000)
	v := &announceValidator{now: func() time.Time { return now }}
	makeMap(&v.last)
	a := []string{"/ip4/127.0.0.1/tcp/4001/p2p/" + from.String()}
	b := []string{"/ip4/127.0.0.1/tcp/4002/p2p/" + from.String()}
	enc := func(addrs []string, seq uint64) *pubsub.Message {
		data, _ := json.Marshal(Announcement{Node: from.String(), Addrs: addrs, TimeMs: now.UnixMilli(), Seq: seq})
		return &pubsub.Message{Message: &pb.Message{From: []byte(from), Data: data}}
	}
	const in, stray, ignored = "announcement", "stray", "ignored"
	for _, tc := range []struct {
		name  string
		after time.Duration // the clock moves first
		addrs []string
		seq   uint64
		want  string
	}{
		{"the newer process", 0, b, 2000, in},
		{"the older process, other addresses", time.Second, a, 1000, stray},
		{"the newer again", time.Second, b, 2001, in},
		{"the older again", time.Second, a, 1001, stray},
		{"a reordered message of the newer one", 0, b, 1999, ignored},
		{"the newer one is silent 10 s", 9 * time.Second, a, 1002, stray},
		{"past the freshness limit the older one takes over", time.Millisecond, a, 1003, in},
		{"and its own order holds", 0, a, 1003, ignored},
		{"a straggler of the other", 0, b, 2002, in}, // its seq is higher: news again (and a switch for the detector)
	} {
		now = now.Add(tc.after)
		m := enc(tc.addrs, tc.seq)
		res := v.validate(context.Background(), from, m)
		got := ignored
		switch d := m.ValidatorData.(type) {
		case *Announcement:
			got = in
		case *StrayAnnouncement:
			got = stray
			if d.Seq != tc.seq || d.Node != from.String() {
				t.Errorf("%s: stray %+v", tc.name, d)
			}
		}
		if (res == pubsub.ValidationAccept) != (got != ignored) || got != tc.want {
			t.Errorf("%s: %v / %s, want %s", tc.name, res, got, tc.want)
		}
	}
}
