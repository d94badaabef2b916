package p2p

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// newTestHost starts a real libp2p host on loopback with a fresh data
// directory, bootstrapping to the given full multiaddrs, and closes it at
// test end.
func newTestHost(t *testing.T, bootstrap ...string) *Host {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := NewHost(ctx, Config{
		DataDir:   t.TempDir(),
		Listen:    []string{"/ip4/127.0.0.1/tcp/0"},
		Bootstrap: bootstrap,
	})
	if err != nil {
		t.Fatalf("NewHost: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func TestLoadOrCreateIdentity(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "role")
	key, err := LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatalf("first call: %v", err)
	}
	if key.Type() != crypto.Ed25519 {
		t.Errorf("key type = %v, want Ed25519", key.Type())
	}
	path := filepath.Join(dir, IdentityFile)
	mode := func(p string) os.FileMode {
		t.Helper()
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode().Perm()
	}
	if m := mode(path); m != 0o600 {
		t.Errorf("key file mode = %o, want 600", m)
	}
	if m := mode(dir); m != 0o700 {
		t.Errorf("dir mode = %o, want 700", m)
	}

	again, err := LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatalf("second call: %v", err)
	}
	if !key.Equals(again) {
		t.Fatal("second call returned a different key")
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	loose, err := LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatalf("after chmod 0644: %v", err)
	}
	if !key.Equals(loose) {
		t.Fatal("key changed after chmod")
	}
	if m := mode(path); m != 0o600 {
		t.Errorf("key file mode after reload = %o, want 600 (tightened)", m)
	}

	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, IdentityFile), []byte("not a key at all"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateIdentity(bad); err == nil {
		t.Fatal("garbage key file: want an error")
	}
}

func TestFrameRoundTrip(t *testing.T) {
	frames := []struct {
		typ     byte
		payload []byte
	}{
		{FrameRequest, []byte(`{"request_id":"r1"}`)},
		{FrameBody, nil},
		{FrameData, bytes.Repeat([]byte("x"), 300)}, // length needs a 2-byte uvarint
		{FrameTrailer, []byte("t")},
	}
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	for _, f := range frames {
		if err := WriteFrame(w, f.typ, f.payload); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(&buf)
	scratch := make([]byte, 0, 64)
	for i, f := range frames {
		typ, payload, err := ReadFrame(r, scratch, MaxFrame)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if typ != f.typ || !bytes.Equal(payload, f.payload) {
			t.Fatalf("frame %d = %q %q, want %q %q", i, typ, payload, f.typ, f.payload)
		}
		if len(payload) > 0 && len(payload) <= cap(scratch) && &payload[0] != &scratch[:1][0] {
			t.Errorf("frame %d: payload of %d bytes did not reuse the %d-byte buffer", i, len(payload), cap(scratch))
		}
	}
	if _, _, err := ReadFrame(r, nil, MaxFrame); err != io.EOF {
		t.Fatalf("read past the last frame: %v, want io.EOF", err)
	}
}

func TestFrameErrors(t *testing.T) {
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	if err := WriteFrame(w, FrameJSON, bytes.Repeat([]byte("a"), 100)); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	whole := buf.Bytes()

	if _, _, err := ReadFrame(bufio.NewReader(bytes.NewReader(whole)), nil, 99); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("frame above max: %v, want ErrFrameTooLarge", err)
	}
	if _, _, err := ReadFrame(bufio.NewReader(bytes.NewReader(whole)), nil, 100); err != nil {
		t.Errorf("frame at max: %v", err)
	}
	for _, n := range []int{1, 2, 50, len(whole) - 1} {
		_, _, err := ReadFrame(bufio.NewReader(bytes.NewReader(whole[:n])), nil, MaxFrame)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("truncated to %d bytes: %v, want io.ErrUnexpectedEOF", n, err)
		}
	}
	// A length whose uvarint is cut in the middle.
	cut := []byte{FrameJSON, 0x80}
	if _, _, err := ReadFrame(bufio.NewReader(bytes.NewReader(cut)), nil, MaxFrame); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("cut length: %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestConfigValidate(t *testing.T) {
	_, id := testkit.RandomPeer(t)
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"ok", Config{DataDir: "d", Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Bootstrap: []string{"/ip4/127.0.0.1/tcp/1/p2p/" + id.String()}}, true},
		{"no data dir", Config{}, false},
		{"bad listen", Config{DataDir: "d", Listen: []string{"127.0.0.1:80"}}, false},
		{"bootstrap without peer id", Config{DataDir: "d", Bootstrap: []string{"/ip4/127.0.0.1/tcp/1"}}, false},
	} {
		if err := tc.cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestNewHostWritesFiles(t *testing.T) {
	h := newTestHost(t)
	dir := h.DataDir()
	raw, err := os.ReadFile(filepath.Join(dir, PeerIDFile))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(raw)); got != h.ID().String() {
		t.Errorf("peer-id = %q, want %q", got, h.ID())
	}
	raw, err = os.ReadFile(filepath.Join(dir, AddrsFile))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) == 0 || lines[0] == "" {
		t.Fatal("addrs file is empty")
	}
	for _, l := range lines {
		if !strings.HasSuffix(l, "/p2p/"+h.ID().String()) {
			t.Errorf("addrs line %q does not end with /p2p/<id>", l)
		}
		ai, err := peer.AddrInfoFromString(l)
		if err != nil || ai.ID != h.ID() {
			t.Errorf("addrs line %q does not parse to this peer: %v", l, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, IdentityFile)); err != nil {
		t.Errorf("identity file: %v", err)
	}

	if err := WriteReady(dir); err != nil {
		t.Fatal(err)
	}
	if err := WriteHTTPAddr(dir, "127.0.0.1:1234"); err != nil {
		t.Fatal(err)
	}
	RemoveRunFiles(dir)
	for _, f := range []string{ReadyFile, HTTPAddrFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
			t.Errorf("%s still there after RemoveRunFiles: %v", f, err)
		}
	}
}

func TestFindThroughBootstrap(t *testing.T) {
	c := newTestHost(t)
	boot := c.FullAddrs()[0]
	a := newTestHost(t, boot)
	b := newTestHost(t, boot)

	if a.Network().Connectedness(c.ID()) != network.Connected || b.Network().Connectedness(c.ID()) != network.Connected {
		t.Fatal("A and B should be connected to their bootstrap peer C")
	}
	if a.Network().Connectedness(b.ID()) == network.Connected {
		t.Fatal("A is already connected to B; the test proves nothing")
	}
	if addrs := a.Peerstore().Addrs(b.ID()); len(addrs) != 0 {
		t.Fatalf("A already knows B's addresses %v; the test proves nothing", addrs)
	}

	// C learns B's listen addresses from identify, which runs on C's side
	// after B's dial returns (see TestFindRightAfterJoin).
	testkit.WaitFor(t, 5*time.Second, "C to learn B's addresses", func() bool { return len(c.Peerstore().Addrs(b.ID())) > 0 })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Find(ctx, b.ID()); err != nil {
		t.Fatalf("A.Find(B): %v", err)
	}
	if a.Network().Connectedness(b.ID()) != network.Connected {
		t.Fatal("A is not connected to B after Find")
	}
	if err := a.Find(ctx, a.ID()); err != nil {
		t.Errorf("Find(self): %v", err)
	}

	_, stranger := testkit.RandomPeer(t)
	start := time.Now()
	err := a.Find(ctx, stranger)
	if err == nil {
		t.Fatal("Find(unknown peer) succeeded")
	}
	if !errors.Is(err, ErrPeerNotFound) {
		t.Errorf("Find(unknown peer) = %v, want ErrPeerNotFound", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Find(unknown peer) took %v", d)
	}
}

// TestFindRightAfterJoin asks for a peer as soon as it has joined through the
// bootstrap peer, as a gateway does for a node whose announcement it just saw.
func TestFindRightAfterJoin(t *testing.T) {
	c := newTestHost(t)
	boot := c.FullAddrs()[0]
	a := newTestHost(t, boot)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 10 {
		b := newTestHost(t, boot)
		known := len(c.Peerstore().Addrs(b.ID())) > 0
		if err := a.Find(ctx, b.ID()); err != nil {
			t.Fatalf("Find failed for a peer that had just joined (try %d; bootstrap knew its addrs before Find: %v): %v", i, known, err)
		}
		b.Close()
	}
}

// TestAnnouncementValidator runs the load-topic validator on a real GossipSub
// topic: the node publishes on a topic without a validator, so bad
// announcements leave it and only the gateway's validator can stop them.
func TestAnnouncementValidator(t *testing.T) {
	boot := newTestHost(t)
	node := newTestHost(t, boot.FullAddrs()[0])
	gw := newTestHost(t, boot.FullAddrs()[0])
	// The observer has no validator: it proves the bad announcements did
	// leave the node, so only the gateway's validator stopped them.
	observer := newTestHost(t, boot.FullAddrs()[0])

	gwTopic, err := JoinLoadTopic(gw, nil)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := gwTopic.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Cancel()
	nodeTopic, err := node.PubSub.Join(TopicLoad)
	if err != nil {
		t.Fatal(err)
	}
	obsTopic, err := observer.PubSub.Join(TopicLoad)
	if err != nil {
		t.Fatal(err)
	}
	obsSub, err := obsTopic.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	defer obsSub.Cancel()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, p := range []peer.ID{gw.ID(), observer.ID()} {
		testkit.WaitFor(t, 5*time.Second, "the bootstrap to learn a peer's addresses", func() bool { return len(boot.Peerstore().Addrs(p)) > 0 })
		if err := node.Find(ctx, p); err != nil {
			t.Fatalf("node.Find(%s): %v", p, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for peers := nodeTopic.ListPeers(); !slices.Contains(peers, gw.ID()) || !slices.Contains(peers, observer.ID()); peers = nodeTopic.ListPeers() {
		if time.Now().After(deadline) {
			t.Fatal("the node never saw the gateway and the observer on the load topic")
		}
		time.Sleep(50 * time.Millisecond)
	}

	publish := func(a Announcement) {
		t.Helper()
		b, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		if err := nodeTopic.Publish(ctx, b); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
	ann := func(seq uint64, at time.Time) Announcement {
		return Announcement{
			Node:   node.ID().String(),
			Addrs:  node.FullAddrs(),
			Models: []ModelLoad{{Model: "m", Capacity: 4, InFlight: 1}},
			TimeMs: at.UnixMilli(),
			Seq:    seq,
		}
	}
	next := func(timeout time.Duration) (*pubsub.Message, error) {
		nctx, ncancel := context.WithTimeout(ctx, timeout)
		defer ncancel()
		return sub.Next(nctx)
	}

	// Retry a fresh, valid announcement (a higher Seq each time) until the
	// mesh carries one.
	var seq uint64
	var got *Announcement
	for seq = 1; got == nil; seq++ {
		if time.Now().After(deadline) {
			t.Fatal("no valid announcement delivered within 10 s")
		}
		publish(ann(seq, time.Now()))
		msg, err := next(500 * time.Millisecond)
		if err != nil {
			continue
		}
		a, ok := msg.ValidatorData.(*Announcement)
		if !ok {
			t.Fatalf("ValidatorData is %T, want *Announcement", msg.ValidatorData)
		}
		if msg.GetFrom() != node.ID() || a.Node != node.ID().String() {
			t.Fatalf("announcement from %s for %s, want the node %s", msg.GetFrom(), a.Node, node.ID())
		}
		if len(a.Models) != 1 || a.Models[0].Capacity != 4 {
			t.Fatalf("announcement content lost: %+v", a)
		}
		got = a
	}
	// Drain any later retry that was also delivered.
	last := got.Seq
	for {
		msg, err := next(300 * time.Millisecond)
		if err != nil {
			break
		}
		last = msg.ValidatorData.(*Announcement).Seq
	}

	forged := ann(last+1, time.Now())
	forged.Node = boot.ID().String() // speaks for another peer
	publish(forged)
	publish(ann(last+2, time.Now().Add(-60*time.Second))) // stale
	publish(ann(last, time.Now()))                        // replayed Seq
	publish(ann(last+2, time.Now().Add(60*time.Second)))  // from the future
	good := ann(last+10, time.Now())
	publish(good)

	msg, err := next(5 * time.Second)
	if err != nil {
		t.Fatalf("the valid announcement after the bad ones never arrived: %v", err)
	}
	a, ok := msg.ValidatorData.(*Announcement)
	if !ok {
		t.Fatalf("ValidatorData is %T, want *Announcement", msg.ValidatorData)
	}
	if a.Seq != good.Seq || a.Node != good.Node {
		t.Fatalf("next delivered announcement = node %s seq %d, want the good one (seq %d): a bad one got through",
			a.Node, a.Seq, good.Seq)
	}

	sawForged, sawGood := false, false
	var seqs []uint64
	octx, ocancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ocancel()
	for {
		msg, err := obsSub.Next(octx)
		if err != nil {
			t.Fatalf("the observer never saw both the forged and the good announcement: %v (saw seqs %v, good %d, forged %d)", err, seqs, good.Seq, forged.Seq)
		}
		var oa Announcement
		if err := json.Unmarshal(msg.Data, &oa); err != nil {
			t.Fatal(err)
		}
		sawForged = sawForged || oa.Node == forged.Node
		sawGood = sawGood || oa.Seq == good.Seq
		seqs = append(seqs, oa.Seq)
		// GossipSub validates in parallel, so arrival order is not publish
		// order: wait for both.
		if sawForged && sawGood {
			break
		}
	}
	if !sawForged {
		t.Fatalf("the observer never saw the forged announcement: the test did not exercise the validator (seqs %v forged %d)", seqs, forged.Seq)
	}
}

// makeMap initialises a map field whatever its value type (the validator's
// replay-filter entries are an implementation detail).
func makeMap[M ~map[K]V, K comparable, V any](m *M) { *m = make(M) }

// TestAnnouncementValidatorTable drives the validator directly with a fixed clock.
func TestAnnouncementValidatorTable(t *testing.T) {
	_, from := testkit.RandomPeer(t)
	_, other := testkit.RandomPeer(t)
	now := time.UnixMilli(1_700_000_000_000)
	v := &announceValidator{now: func() time.Time { return now }}
	makeMap(&v.last)
	msg := func(data []byte) *pubsub.Message {
		return &pubsub.Message{Message: &pb.Message{From: []byte(from), Data: data}}
	}
	enc := func(node peer.ID, at time.Time, seq uint64) []byte {
		b, _ := json.Marshal(Announcement{Node: node.String(), TimeMs: at.UnixMilli(), Seq: seq})
		return b
	}
	for _, tc := range []struct {
		name string
		data []byte
		want pubsub.ValidationResult
	}{
		{"fresh", enc(from, now, 1), pubsub.ValidationAccept},
		{"same seq", enc(from, now, 1), pubsub.ValidationIgnore},
		{"older seq", enc(from, now, 0), pubsub.ValidationIgnore},
		{"next seq, 9 s old", enc(from, now.Add(-9*time.Second), 2), pubsub.ValidationAccept},
		{"11 s old", enc(from, now.Add(-11*time.Second), 3), pubsub.ValidationIgnore},
		{"11 s ahead", enc(from, now.Add(11*time.Second), 3), pubsub.ValidationIgnore},
		{"for another node", enc(other, now, 3), pubsub.ValidationReject},
		{"not json", []byte("{"), pubsub.ValidationReject},
		{"oversized", append(enc(from, now, 3), bytes.Repeat([]byte(" "), MaxAnnouncement)...), pubsub.ValidationReject},
		{"seq after ignored ones", enc(from, now, 3), pubsub.ValidationAccept},
	} {
		m := msg(tc.data)
		if got := v.validate(context.Background(), from, m); got != tc.want {
			t.Errorf("%s: validate = %v, want %v", tc.name, got, tc.want)
		}
		if tc.want == pubsub.ValidationAccept {
			if a, ok := m.ValidatorData.(*Announcement); !ok || a.Node != from.String() {
				t.Errorf("%s: ValidatorData = %#v", tc.name, m.ValidatorData)
			}
		}
	}
}

// Receipts.

// claimMAC is the MAC nodeKey's node gives claim c for platform.
func claimMAC(t testing.TB, nodeKey crypto.PrivKey, platform peer.ID, c NodeClaim) []byte {
	t.Helper()
	node, err := peer.IDFromPrivateKey(nodeKey)
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewClaimAuth(nodeKey, platform, node, platform)
	if err != nil {
		t.Fatal(err)
	}
	return a.MAC(c)
}

func signedReceipt(t *testing.T, nodeKey, gwKey crypto.PrivKey, platform peer.ID) *Receipt {
	t.Helper()
	nodeID, _ := peer.IDFromPrivateKey(nodeKey)
	gwID, _ := peer.IDFromPrivateKey(gwKey)
	claim := NodeClaim{
		RequestID: "req-1", Model: "llama", Node: nodeID.String(), Gateway: gwID.String(),
		PromptTokens: 100, CompletionTokens: 50,
	}
	sig := claimMAC(t, nodeKey, platform, claim)
	price := economy.DefaultPriceTable().For("llama")
	r := &Receipt{
		RequestID: "req-1", Model: "llama", Consumer: "acct_1", Node: claim.Node, Gateway: claim.Gateway,
		PromptTokens: 100, CompletionTokens: 40, Price: price, CostUcr: economy.Cost(price, 100, 40),
		TimeMs: time.Now().UnixMilli(), Claim: claim, NodeMAC: sig,
	}
	if err := r.Sign(gwKey); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestReceiptVerify(t *testing.T) {
	nodeKey, _ := testkit.RandomPeer(t)
	gwKey, _ := testkit.RandomPeer(t)
	otherKey, otherID := testkit.RandomPeer(t)
	platKey, plat := testkit.RandomPeer(t)
	v, err := NewClaimVerifier(platKey)
	if err != nil {
		t.Fatal(err)
	}

	if err := signedReceipt(t, nodeKey, gwKey, plat).Verify(v); err != nil {
		t.Fatalf("a correct receipt does not verify: %v", err)
	}

	resignClaim := func(r *Receipt, key crypto.PrivKey) {
		r.NodeMAC = claimMAC(t, key, plat, r.Claim)
	}
	for _, tc := range []struct {
		name   string
		tamper func(r *Receipt)
		want   error
	}{
		{"billed completion above claim", func(r *Receipt) {
			r.CompletionTokens = r.Claim.CompletionTokens + 1
			r.Sign(gwKey)
		}, ErrBadReceipt},
		{"billed prompt above claim", func(r *Receipt) {
			r.PromptTokens = r.Claim.PromptTokens + 1
			r.Sign(gwKey)
		}, ErrBadReceipt},
		{"claim for another request", func(r *Receipt) {
			r.Claim.RequestID = "req-2"
			resignClaim(r, nodeKey)
			r.Sign(gwKey)
		}, ErrBadReceipt},
		{"claim for another node", func(r *Receipt) {
			r.Claim.Node = otherID.String()
			resignClaim(r, otherKey)
			r.Sign(gwKey)
		}, ErrBadReceipt},
		{"node MAC by another key", func(r *Receipt) {
			resignClaim(r, otherKey)
			r.Sign(gwKey)
		}, ErrBadSignature},
		{"node MAC for another platform", func(r *Receipt) {
			r.NodeMAC = claimMAC(t, nodeKey, otherID, r.Claim)
			r.Sign(gwKey)
		}, ErrBadSignature},
		{"claim changed after its MAC", func(r *Receipt) {
			r.Claim.PromptTokens++
			r.Sign(gwKey)
		}, ErrBadSignature},
		{"missing node MAC", func(r *Receipt) {
			r.NodeMAC = nil
			r.Sign(gwKey)
		}, ErrBadSignature},
		{"gateway sig by another key", func(r *Receipt) {
			r.Sign(otherKey)
		}, ErrBadSignature},
		{"cost changed after signing", func(r *Receipt) {
			r.CostUcr++
		}, ErrBadSignature},
		{"consumer changed after signing", func(r *Receipt) {
			r.Consumer = "acct_2"
		}, ErrBadSignature},
		{"missing gateway sig", func(r *Receipt) {
			r.GatewaySig = nil
		}, ErrBadSignature},
		{"negative tokens", func(r *Receipt) {
			r.CompletionTokens = -5
			r.Sign(gwKey)
		}, ErrBadReceipt},
		{"negative cost", func(r *Receipt) {
			r.CostUcr = -1
			r.Sign(gwKey)
		}, ErrBadReceipt},
		{"bad node peer id", func(r *Receipt) {
			r.Node, r.Claim.Node = "not-a-peer", "not-a-peer"
			r.Sign(gwKey)
		}, ErrBadSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := signedReceipt(t, nodeKey, gwKey, plat)
			tc.tamper(r)
			err := r.Verify(v)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify() = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestNodeRegistrationSignature(t *testing.T) {
	nodeKey, nodeID := testkit.RandomPeer(t)
	otherKey, _ := testkit.RandomPeer(t)
	reg := &NodeRegistration{Node: nodeID.String(), APIKey: "trk_abc", TimeMs: time.Now().UnixMilli()}
	if err := reg.Sign(nodeKey); err != nil {
		t.Fatal(err)
	}
	if err := reg.Verify(); err != nil {
		t.Fatalf("good registration: %v", err)
	}
	changed := *reg
	changed.APIKey = "trk_other"
	if err := changed.Verify(); !errors.Is(err, ErrBadSignature) {
		t.Errorf("API key changed after signing: %v", err)
	}
	forged := *reg
	forged.Sign(otherKey)
	if err := forged.Verify(); !errors.Is(err, ErrBadSignature) {
		t.Errorf("signed by another key: %v", err)
	}
}

func TestSettleRoundTrip(t *testing.T) {
	server := newTestHost(t)
	client := newTestHost(t, server.FullAddrs()[0])

	remotes := make(chan peer.ID, 4)
	ServeSettle(server, func(_ context.Context, remote peer.ID, req *SettleRequest) *SettleResponse {
		remotes <- remote
		switch req.Op {
		case OpAccount:
			if req.APIKey != "trk_good" {
				return &SettleResponse{Error: &RPCError{Code: CodeUnknownKey, Message: "invalid API key"}}
			}
			return &SettleResponse{Account: &AccountInfo{Account: "acct_1", BalanceUcr: 42}}
		case OpReceipt:
			return &SettleResponse{Applied: req.Receipt != nil && req.Receipt.RequestID == "req-1"}
		}
		return &SettleResponse{Error: &RPCError{Code: CodeInvalid, Message: "unknown op"}}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := client.CallSettle(ctx, server.ID(), &SettleRequest{Op: OpAccount, APIKey: "trk_good"})
	if err != nil {
		t.Fatalf("CallSettle: %v", err)
	}
	if resp.Account == nil || resp.Account.Account != "acct_1" || resp.Account.BalanceUcr != 42 {
		t.Fatalf("account = %+v", resp.Account)
	}
	if got := <-remotes; got != client.ID() {
		t.Errorf("handler saw remote %s, want the client %s", got, client.ID())
	}

	nodeKey, _ := testkit.RandomPeer(t)
	r := signedReceipt(t, nodeKey, client.Key, server.ID())
	resp, err = client.CallSettle(ctx, server.ID(), &SettleRequest{Op: OpReceipt, Receipt: r})
	if err != nil || !resp.Applied {
		t.Fatalf("receipt round trip: applied=%v err=%v", resp != nil && resp.Applied, err)
	}
	<-remotes

	resp, err = client.CallSettle(ctx, server.ID(), &SettleRequest{Op: OpAccount, APIKey: "trk_bad"})
	var rpcErr *RPCError
	if !errors.As(err, &rpcErr) {
		t.Fatalf("bad key: err = %v (%T), want *RPCError", err, err)
	}
	if rpcErr.Code != CodeUnknownKey {
		t.Errorf("code = %q, want %q", rpcErr.Code, CodeUnknownKey)
	}
	if resp == nil || resp.Error == nil {
		t.Errorf("the response should come back with the error too: %+v", resp)
	}
	<-remotes

	// A peer that does not serve the protocol is an ordinary error, not an RPCError.
	plain := newTestHost(t, server.FullAddrs()[0])
	testkit.WaitFor(t, 5*time.Second, "the server to learn plain's addresses", func() bool { return len(server.Peerstore().Addrs(plain.ID())) > 0 })
	if err := client.Find(ctx, plain.ID()); err != nil {
		t.Fatalf("Find(plain): %v", err)
	}
	_, err = client.CallSettle(ctx, plain.ID(), &SettleRequest{Op: OpPrices})
	if err == nil || errors.As(err, &rpcErr) {
		t.Errorf("call to a peer without the protocol: %v", err)
	}
}
