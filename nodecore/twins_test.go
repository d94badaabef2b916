package nodecore

import (
	"testing"
	"time"
)

func TestTwinDetector(t *testing.T) {
	const peer = "12D3KooWTwin"
	addrA := []string{"/ip4/10.0.0.1/tcp/4001/p2p/" + peer, "/ip4/127.0.0.1/tcp/4001/p2p/" + peer}
	addrB := []string{"/ip4/127.0.0.1/tcp/4001/p2p/" + peer, "/ip4/10.0.0.2/tcp/4001/p2p/" + peer} // one address in common
	addrC := []string{"/ip4/127.0.0.1/tcp/5001/p2p/" + peer}
	sets := map[string][]string{"A": addrA, "B": addrB, "C": addrC}
	const seqA, seqB = uint64(1_700_000_000_000_000_000), uint64(1_700_000_004_000_000_000) // B started 4 s after A
	const seqLow = uint64(1_699_999_000_000_000_000)                                        // a restart whose clock went back

	// ev is one announcement: at ms, from address set, with seq; then the
	// detector's verdict right after it.
	type ev struct {
		ms      int64
		set     string
		seq     uint64
		flagged bool
	}
	// twins announce every 3 s, interleaved, each with its own counter.
	twins := func(from, to int64, flaggedFrom int64) []ev {
		var out []ev
		k := uint64(0)
		for ms := from; ms < to; ms += 3000 {
			k++
			out = append(out, ev{ms, "A", seqA + 100 + k, ms >= flaggedFrom}, ev{ms + 1500, "B", seqB + k, ms+1500 >= flaggedFrom})
		}
		return out
	}
	cases := []struct {
		name string
		evs  []ev
		// then, at checkMs with no further announcement, flagged or not
		checkMs   int64
		checkFlag bool
	}{
		{name: "one node, one address set", evs: []ev{{0, "A", seqA + 1, false}, {3000, "A", seqA + 2, false}, {6000, "A", seqA + 3, false}}, checkMs: 7000},
		{
			name: "restart on a new port: forward once, never flagged",
			evs: []ev{
				{0, "A", seqA + 1, false}, {3000, "A", seqA + 2, false}, {6000, "A", seqA + 3, false},
				{8000, "C", seqB + 1, false}, {11000, "C", seqB + 2, false}, {14000, "C", seqB + 3, false},
			},
			checkMs: 15000,
		},
		{
			name: "restart with a straggler from the old process: one backward switch",
			evs: []ev{
				{0, "A", seqA + 1, false}, {3000, "A", seqA + 2, false},
				{4000, "C", seqB + 1, false}, {4100, "A", seqA + 3, false}, {7000, "C", seqB + 2, false}, {10000, "C", seqB + 3, false},
			},
			checkMs: 11000,
		},
		{
			name: "restart with the clock set back: the new sequence is lower, one backward switch",
			evs: []ev{
				{0, "A", seqA + 1, false}, {3000, "A", seqA + 2, false},
				{5000, "C", seqLow + 1, false}, {8000, "C", seqLow + 2, false}, {11000, "C", seqLow + 3, false}, {14000, "C", seqLow + 4, false},
			},
			checkMs: 15000,
		},
		{
			name: "an address added and removed by one process: sequence only grows",
			evs: []ev{
				{0, "A", seqA + 1, false}, {1000, "B", seqA + 2, false}, {2000, "A", seqA + 3, false},
				{3000, "B", seqA + 4, false}, {4000, "A", seqA + 5, false}, {5000, "B", seqA + 6, false},
			},
			checkMs: 6000,
		},
		{
			name: "one process reordered on the way while its addresses flap",
			evs: []ev{
				{0, "A", seqA + 2, false}, {10, "B", seqA + 1, false}, {1000, "A", seqA + 4, false},
				{1010, "B", seqA + 3, false}, {2000, "A", seqA + 5, false},
			},
			checkMs: 3000,
		},
		{
			name:      "twins: flagged on the second backward switch, both stay flagged",
			evs:       twins(0, 15000, 6000),
			checkMs:   15000,
			checkFlag: true,
		},
		{
			name: "twins, then the newer one stops: the survivor clears Window after the other's last word",
			evs: append(twins(0, 9000, 6000),
				ev{9000, "A", seqA + 200, true}, ev{12000, "A", seqA + 201, true}, ev{18000, "A", seqA + 202, true},
				ev{21000, "A", seqA + 203, true}, ev{22600, "A", seqA + 204, false}),
			checkMs: 40000,
		},
		{
			name: "twins, then the older one stops: the newer clears likewise",
			evs: append(twins(0, 9000, 6000),
				ev{10500, "B", seqB + 50, true}, ev{13500, "B", seqB + 51, true}, ev{21000, "B", seqB + 52, true}, ev{22100, "B", seqB + 53, false}),
			checkMs: 23000,
		},
		{
			name:    "twins whose announcements come rarely: backward switches too far apart",
			evs:     []ev{{0, "A", seqA + 1, false}, {1000, "B", seqB + 1, false}, {2000, "A", seqA + 2, false}, {20000, "B", seqB + 2, false}, {21000, "A", seqA + 3, false}},
			checkMs: 22000,
		},
		{
			name:      "flag ends when both stop",
			evs:       twins(0, 9000, 6000),
			checkMs:   9000 + 1500 + 15001,
			checkFlag: false,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := NewTwinDetector(DefaultTwinConfig())
			t0 := time.Unix(1_700_000_000, 0)
			for i, e := range c.evs {
				got, _ := d.Observe(peer, sets[e.set], e.seq, t0.Add(time.Duration(e.ms)*time.Millisecond))
				if got != e.flagged {
					t.Fatalf("event %d (%d ms, set %s): flagged %v, want %v", i, e.ms, e.set, got, e.flagged)
				}
			}
			_, got := d.Flag(peer, t0.Add(time.Duration(c.checkMs)*time.Millisecond))
			if got != c.checkFlag {
				t.Fatalf("at %d ms: flagged %v, want %v", c.checkMs, got, c.checkFlag)
			}
		})
	}
}

func TestTwinDetectorReasonAndChanges(t *testing.T) {
	const peer = "12D3KooWTwin"
	d := NewTwinDetector(TwinConfig{})
	t0 := time.Unix(1_700_000_000, 0)
	a := []string{"/ip4/127.0.0.1/tcp/4001/p2p/" + peer}
	b := []string{"/ip4/127.0.0.1/tcp/4002/p2p/" + peer}
	var changes []bool
	obs := func(ms int64, addrs []string, seq uint64) {
		f, ch := d.Observe(peer, addrs, seq, t0.Add(time.Duration(ms)*time.Millisecond))
		if ch {
			changes = append(changes, f)
		}
	}
	obs(0, a, 10)
	obs(100, b, 5_000_000_000)
	obs(200, a, 11)
	obs(300, b, 5_000_000_001)
	obs(400, a, 12)
	f, ok := d.Flag(peer, t0.Add(500*time.Millisecond))
	if !ok {
		t.Fatal("twins not flagged")
	}
	want := "two hosts announce peer 12D3KooWTwin from different addresses: [/ip4/127.0.0.1/tcp/4001] and [/ip4/127.0.0.1/tcp/4002]; both are refused until one stops"
	if f.Reason != want || !f.Since.Equal(t0.Add(400*time.Millisecond)) {
		t.Fatalf("flag %+v, want reason %q since 400 ms", f, want)
	}
	if fl := d.Flags(t0.Add(time.Second)); len(fl) != 1 || fl[0].Peer != peer {
		t.Fatalf("Flags: %+v", fl)
	}
	// b stops; a goes on alone.
	for ms := int64(3400); ms <= 12400; ms += 3000 {
		obs(ms, a, uint64(13+ms))
	}
	if _, ok := d.Flag(peer, t0.Add(15300*time.Millisecond)); !ok {
		t.Fatal("cleared before b was silent for the window")
	}
	if cl := d.Sweep(t0.Add(15301 * time.Millisecond)); len(cl) != 1 || cl[0] != peer {
		t.Fatalf("Sweep cleared %v", cl)
	}
	if len(changes) != 1 || !changes[0] {
		t.Fatalf("changes %v, want one raise (the clear came from Sweep)", changes)
	}
	if d.Sweep(t0.Add(time.Minute)); len(d.peers) != 0 {
		t.Fatal("a silent peer is not forgotten")
	}
}

func TestTwinDetectorBounds(t *testing.T) {
	d := NewTwinDetector(TwinConfig{MaxPeers: 2, MaxSets: 2})
	t0 := time.Unix(1_700_000_000, 0)
	d.Observe("p1", []string{"a"}, 1, t0)
	d.Observe("p2", []string{"a"}, 1, t0)
	d.Observe("p3", []string{"a"}, 1, t0) // full: dropped
	if len(d.peers) != 2 {
		t.Fatalf("%d peers tracked, want 2", len(d.peers))
	}
	d.Observe("p3", []string{"a"}, 1, t0.Add(time.Minute)) // the others went silent: room again
	if _, ok := d.peers["p3"]; !ok || len(d.peers) != 1 {
		t.Fatalf("peers %v", d.peers)
	}
	for i, s := range []string{"a", "b", "c", "d"} {
		d.Observe("p3", []string{s}, uint64(2+i), t0.Add(time.Minute+time.Duration(i)*time.Second))
	}
	if n := len(d.peers["p3"].ann.sets); n != 2 {
		t.Fatalf("%d address sets kept, want 2", n)
	}
}

// One process seen through two connections whose identify reports differ
// (a loopback one lists loopback addresses, a LAN one does not), beside its
// announcements, is never a twin: connection sightings are told apart by
// the peer record's seq, and never compared with announcement counters.
func TestTwinDetectorOneHostTwoConnections(t *testing.T) {
	d := NewTwinDetector(TwinConfig{})
	t0 := time.Unix(1_700_000_000, 0)
	const record = 1_700_000_000_000_000_000 // the peer record's seq: its time in ns
	announce := uint64(1_699_999_990_000_000_000)
	for i := range 30 {
		at := t0.Add(time.Duration(i) * time.Second)
		announce++
		if f, _ := d.Observe("n", []string{"/ip4/127.0.0.1/tcp/1", "/ip4/10.0.0.5/tcp/1"}, announce, at); f {
			t.Fatalf("flagged after %d s on its announcements", i)
		}
		if i%3 == 0 {
			d.ObserveConn("n", []string{"/ip4/127.0.0.1/tcp/1", "/ip4/10.0.0.5/tcp/1"}, record, at)
			if f, _ := d.ObserveConn("n", []string{"/ip4/10.0.0.5/tcp/1"}, record, at); f {
				t.Fatalf("flagged after %d s: one host, two connections", i)
			}
		}
	}
	// Two processes behind the connections (two records) are.
	flagged := false
	for i := range 10 {
		at := t0.Add(time.Minute + time.Duration(i)*3*time.Second)
		d.ObserveConn("n", []string{"/ip4/10.0.0.5/tcp/1"}, record, at)
		f, _ := d.ObserveConn("n", []string{"/ip4/10.0.0.6/tcp/1"}, record+5_000_000_000, at)
		flagged = flagged || f
	}
	if !flagged {
		t.Fatal("two peer records behind live connections were not flagged")
	}
}
