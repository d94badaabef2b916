package p2p

import (
	"bytes"
	"compress/lzw"
	"encoding/binary"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/libp2p/go-libp2p/core/peer"
)

// memberlist tells its EventDelegate when a member joins, dies or leaves,
// but not when it becomes suspect, and exports no node states (Node.State
// in its Members is never set). The gateway must drop a suspect at once,
// so membership reads suspicion off the wire: the transport shows it every
// packet this member receives (before memberlist handles it) and every
// packet it sends. memberlist re-broadcasts every suspect, alive and dead
// message it accepts, whatever taught it (a probe of its own, gossip, a
// push/pull), so the packets it sends carry each change of its view within
// a gossip interval, and those it receives carry others' changes the moment
// they arrive. memberTracker applies memberlist's own rules to them
// (state.go: suspectNode, aliveNode, deadNode) so it agrees with memberlist:
// a suspicion of an older incarnation is ignored, a suspect is cleared only
// by an alive message of a higher incarnation, a dead message sent by the
// node itself means it left.

// memberlist's message types (net.go; the numbers are its wire protocol).
const (
	swimSuspectMsg  = 3
	swimAliveMsg    = 4
	swimDeadMsg     = 5
	swimCompoundMsg = 7
	swimCompressMsg = 9
	swimHasCrcMsg   = 12
	swimHasLabelMsg = 244
)

// swimMsgpack decodes memberlist's messages (msgpack maps keyed by field
// name; fields we do not declare are skipped).
var swimMsgpack = &codec.MsgpackHandle{}

// swimNodeMsg is the part of memberlist's suspect, alive and dead messages
// the tracker needs.
type swimNodeMsg struct {
	Incarnation uint32
	Node        string
	From        string // suspect and dead: who says so
}

// walkSwim calls fn for every suspect, alive and dead message in a
// memberlist packet, looking inside label, checksum, compound and
// compression wrappers. Malformed input is skipped: memberlist itself
// judges every packet.
func walkSwim(buf []byte, depth int, fn func(typ byte, body []byte)) {
	if len(buf) == 0 || depth > 4 {
		return
	}
	typ, body := buf[0], buf[1:]
	switch typ {
	case swimSuspectMsg, swimAliveMsg, swimDeadMsg:
		fn(typ, body)
	case swimHasLabelMsg:
		if len(body) >= 1 && len(body) >= 1+int(body[0]) {
			walkSwim(body[1+int(body[0]):], depth+1, fn)
		}
	case swimHasCrcMsg:
		if len(body) >= 4 {
			walkSwim(body[4:], depth+1, fn)
		}
	case swimCompoundMsg:
		walkCompound(body, depth, fn)
	case swimCompressMsg:
		if plain := decompressSwim(body); plain != nil {
			walkSwim(plain, depth+1, fn)
		}
	}
}

func walkCompound(body []byte, depth int, fn func(typ byte, body []byte)) {
	if len(body) < 1 {
		return
	}
	n := int(body[0])
	body = body[1:]
	if len(body) < 2*n {
		return
	}
	lens, body := body[:2*n], body[2*n:]
	for i := range n {
		l := int(binary.BigEndian.Uint16(lens[2*i:]))
		if len(body) < l {
			return
		}
		walkSwim(body[:l], depth+1, fn)
		body = body[l:]
	}
}

// decompressSwim undoes memberlist's LZW compression (off in our config,
// understood in case a member turns it on).
func decompressSwim(body []byte) []byte {
	var c struct {
		Algo uint8
		Buf  []byte
	}
	if codec.NewDecoderBytes(body, swimMsgpack).Decode(&c) != nil || c.Algo != 0 {
		return nil
	}
	r := lzw.NewReader(bytes.NewReader(c.Buf), lzw.LSB, 8)
	defer r.Close()
	plain, err := io.ReadAll(io.LimitReader(r, 4*maxSwimPacket))
	if err != nil {
		return nil
	}
	return plain
}

// memberTracker is membership's view of every member's state, fed by
// memberlist's EventDelegate (joins, deaths) and the wire (suspicions,
// refutations, leaves). publish is called with the tracker's lock held, in
// the order changes happen; it must not block nor call back.
type memberTracker struct {
	self    string
	now     func() time.Time
	publish func(MemberEvent)

	mu       sync.Mutex
	members  map[string]*tracked
	suspects int
}

type tracked struct {
	id    peer.ID
	state MemberState // 0 until memberlist reports the member
	inc   uint32      // the highest incarnation seen
	left  bool        // the member said it leaves (a dead message from itself)
	since time.Time   // when state last changed
}

func newMemberTracker(self string, now func() time.Time, publish func(MemberEvent)) *memberTracker {
	return &memberTracker{self: self, now: now, publish: publish, members: map[string]*tracked{}}
}

// get returns name's entry, creating it (state 0) if create is set.
func (t *memberTracker) get(name string, create bool) *tracked {
	m := t.members[name]
	if m == nil && create {
		id, err := peer.Decode(name)
		if err != nil {
			return nil
		}
		m = &tracked{id: id, since: t.now()}
		t.members[name] = m
	}
	return m
}

// set moves m to st, publishing the change for members other than self.
func (t *memberTracker) set(name string, m *tracked, st MemberState) {
	if m.state == st {
		return
	}
	if m.state == MemberSuspect {
		t.suspects--
	}
	if st == MemberSuspect {
		t.suspects++
	}
	m.state, m.since = st, t.now()
	if name != t.self {
		t.publish(MemberEvent{Peer: m.id, State: st})
	}
}

// joined is memberlist's NotifyJoin: the member is alive (new, or back
// from dead with a higher incarnation).
func (t *memberTracker) joined(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if m := t.get(name, true); m != nil {
		m.left = false
		t.set(name, m, MemberAlive)
	}
}

// gone is memberlist's NotifyLeave: the member is dead, or left if it
// said so.
func (t *memberTracker) gone(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if m := t.get(name, true); m != nil {
		st := MemberDead
		if m.left {
			st = MemberLeft
		}
		t.set(name, m, st)
	}
}

// observe applies the suspect, alive and dead messages in one packet.
func (t *memberTracker) observe(buf []byte) {
	walkSwim(buf, 0, func(typ byte, body []byte) {
		var msg swimNodeMsg
		if codec.NewDecoderBytes(body, swimMsgpack).Decode(&msg) != nil || msg.Node == "" {
			return
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		switch typ {
		case swimAliveMsg:
			t.alive(msg)
		case swimSuspectMsg:
			t.suspect(msg)
		case swimDeadMsg:
			t.dead(msg)
		}
	})
}

// alive: a higher incarnation clears a suspicion (the member refuted it).
// A dead member comes back through joined, when memberlist accepts it.
func (t *memberTracker) alive(msg swimNodeMsg) {
	m := t.get(msg.Node, true)
	if m == nil || msg.Incarnation <= m.inc {
		return
	}
	m.inc, m.left = msg.Incarnation, false
	if m.state == MemberSuspect {
		t.set(msg.Node, m, MemberAlive)
	}
}

// suspect: an alive member is suspect unless the suspicion is of an older
// incarnation than one it already refuted with.
func (t *memberTracker) suspect(msg swimNodeMsg) {
	m := t.get(msg.Node, false)
	if msg.Node == t.self || m == nil || m.state != MemberAlive || msg.Incarnation < m.inc {
		return
	}
	m.inc = msg.Incarnation
	t.set(msg.Node, m, MemberSuspect)
}

// dead: memberlist reports the death itself (gone); here the tracker only
// learns whether the member said it was leaving. A leave learnt after the
// death (memberlist heard it in a push/pull first) turns Dead into Left.
func (t *memberTracker) dead(msg swimNodeMsg) {
	m := t.get(msg.Node, false)
	if msg.Node == t.self || m == nil || msg.Incarnation < m.inc || msg.From != msg.Node {
		return
	}
	m.inc, m.left = msg.Incarnation, true
	if m.state == MemberDead {
		t.set(msg.Node, m, MemberLeft)
	}
}

// alive lists the members in state Alive, self included.
func (t *memberTracker) aliveMembers() []peer.ID {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]peer.ID, 0, len(t.members))
	for _, m := range t.members {
		if m.state == MemberAlive {
			out = append(out, m.id)
		}
	}
	return out
}

// state is name's state (0 if unknown).
func (t *memberTracker) state(id peer.ID) MemberState {
	t.mu.Lock()
	defer t.mu.Unlock()
	if m := t.members[id.String()]; m != nil {
		return m.state
	}
	return 0
}

// staleSuspects lists members suspect since before cutoff. memberlist
// declares a suspect dead or sees it refute well before then, so the
// tracker read a suspicion memberlist did not hold (a rare race with an
// alive message it learnt by push/pull and had not re-broadcast yet).
func (t *memberTracker) staleSuspects(cutoff time.Time) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.suspects == 0 {
		return nil
	}
	var out []string
	for name, m := range t.members {
		if m.state == MemberSuspect && m.since.Before(cutoff) {
			out = append(out, name)
		}
	}
	return out
}

// settle ends a stale suspicion with what memberlist lists: alive if it
// lists the member, dead if not.
func (t *memberTracker) settle(name string, listed bool, cutoff time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.members[name]
	if m == nil || m.state != MemberSuspect || !m.since.Before(cutoff) {
		return
	}
	if listed {
		t.set(name, m, MemberAlive)
	} else {
		t.set(name, m, MemberDead)
	}
}

// prune forgets members dead or left since before cutoff (memberlist has
// forgotten them too; one that comes back joins anew), and names only
// heard of in gossip that memberlist never reported.
func (t *memberTracker) prune(cutoff time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for name, m := range t.members {
		gone := m.state == MemberDead || m.state == MemberLeft || m.state == 0
		if gone && m.since.Before(cutoff) {
			delete(t.members, name)
		}
	}
}
