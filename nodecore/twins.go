package nodecore

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// TwinConfig tunes a TwinDetector.
type TwinConfig struct {
	// Window: backward switches older than this no longer count, and a
	// flag clears once at most one address set has announced within it.
	Window time.Duration
	// Returns is how many backward switches within Window flag a peer.
	Returns int
	// SeqGap is how far below the other set's highest sequence number an
	// announcement must be to count as a backward switch. One process that
	// reorders its own messages stays within a few numbers (it counts one
	// an announcement); two processes start their counters at their start
	// time in nanoseconds, billions apart.
	SeqGap uint64
	// MaxPeers bounds the peers tracked; MaxSets the address sets per peer.
	MaxPeers int
	MaxSets  int
}

// DefaultTwinConfig returns the defaults: flagged on the second backward
// switch within 15 s, cleared after 15 s of a single address set.
func DefaultTwinConfig() TwinConfig {
	return TwinConfig{Window: 15 * time.Second, Returns: 2, SeqGap: 1000, MaxPeers: 100_000, MaxSets: 8}
}

func (c TwinConfig) orDefault() TwinConfig {
	d := DefaultTwinConfig()
	if c.Window <= 0 {
		c.Window = d.Window
	}
	if c.Returns <= 0 {
		c.Returns = d.Returns
	}
	if c.MaxPeers <= 0 {
		c.MaxPeers = d.MaxPeers
	}
	if c.MaxSets < 2 {
		c.MaxSets = d.MaxSets
	}
	return c
}

// TwinDetector spots two live processes announcing one peer id: two
// machines started from one copied identity key. Each process announces
// its own listen addresses with its own sequence numbers (which start at
// its start time in nanoseconds and grow by one an announcement), so
// their announcements arrive from two address sets whose sequences
// interleave. A backward switch is an announcement from another address
// set than the one before it whose sequence number lies well below the
// highest that set sent: the process that sent it is older, yet it still
// speaks after the newer one did. Two of them within Window flag the peer.
//
// A restarted node on a new port switches address set once, forward (its
// new sequence is higher); a straggler from the old process adds at most
// one backward switch; a node whose clock went back on restart switches
// backward once, then only the new set announces. None reach two. A flag
// clears once at most one address set has announced for Window, so the
// survivor of two twins is readmitted Window after the other stops.
//
// It reads no clock and is not safe for concurrent use.
type TwinDetector struct {
	cfg   TwinConfig
	peers map[string]*twinPeer
}

type twinPeer struct {
	ann     source      // announcements: one address set a process
	conn    source      // connections: one signed peer record a process
	backs   []time.Time // backward switches within Window
	flagged bool
	since   time.Time
	reason  string
}

// source is what one kind of sighting saw of a peer. Sequences are only
// compared within a source: an announcement's counter and a peer record's
// seq are different clocks, and one process's connections may carry
// different address sets (identify leaves loopback out of a connection
// that is not on loopback), so connection sightings tell processes apart
// by their peer record's seq, not by addresses.
type source struct {
	sets []*addrSet
	prev *addrSet // the set of the previous sighting
}

type addrSet struct {
	key    string
	addrs  []string
	last   time.Time
	maxSeq uint64
}

// TwinFlag is a flagged peer: since when, and why, in words for operators.
type TwinFlag struct {
	Peer   string
	Since  time.Time
	Reason string
}

// NewTwinDetector returns an empty detector (zero fields of cfg take
// their defaults).
func NewTwinDetector(cfg TwinConfig) *TwinDetector {
	return &TwinDetector{cfg: cfg.orDefault(), peers: map[string]*twinPeer{}}
}

// Observe records an announcement of peer from addrs with sequence number
// seq, received at now. It reports whether peer is flagged afterwards and
// whether that changed.
func (d *TwinDetector) Observe(peer string, addrs []string, seq uint64, now time.Time) (flagged, changed bool) {
	return d.observe(peer, false, addrs, seq, now)
}

// ObserveConn records a live connection to peer whose host identified
// itself with addrs and a signed peer record of sequence number seq.
func (d *TwinDetector) ObserveConn(peer string, addrs []string, seq uint64, now time.Time) (flagged, changed bool) {
	return d.observe(peer, true, addrs, seq, now)
}

func (d *TwinDetector) observe(peer string, conn bool, addrs []string, seq uint64, now time.Time) (flagged, changed bool) {
	p := d.peers[peer]
	if p == nil {
		if len(d.peers) >= d.cfg.MaxPeers {
			d.Sweep(now)
			if len(d.peers) >= d.cfg.MaxPeers {
				return false, false
			}
		}
		p = &twinPeer{}
		d.peers[peer] = p
	}
	was := p.flagged
	src, key := &p.ann, AddrSetKey(addrs)
	if conn {
		src, key = &p.conn, fmt.Sprintf("record %d", seq)
	}
	s := src.set(key, addrs, d.cfg.MaxSets)
	if q := src.prev; q != nil && q != s && seq < q.maxSeq && q.maxSeq-seq > d.cfg.SeqGap {
		p.backs = append(p.backs, now)
	}
	if now.After(s.last) {
		s.last = now
	}
	s.addrs = addrsOf(AddrSetKey(addrs))
	s.maxSeq = max(s.maxSeq, seq)
	src.prev = s
	d.settle(p, now)
	if !p.flagged && len(p.backs) >= d.cfg.Returns {
		p.flagged, p.since = true, now
	}
	if p.flagged {
		p.reason = d.reason(peer, p, now)
	}
	return p.flagged, p.flagged != was
}

// set returns p's entry for addrs, adding it (and dropping the set seen
// least recently past max).
func (p *source) set(key string, addrs []string, max int) *addrSet {
	for _, s := range p.sets {
		if s.key == key {
			return s
		}
	}
	s := &addrSet{key: key, addrs: addrsOf(AddrSetKey(addrs))}
	if len(p.sets) >= max {
		oldest := 0
		for i, o := range p.sets {
			if o != p.prev && (p.sets[oldest] == p.prev || o.last.Before(p.sets[oldest].last)) {
				oldest = i
			}
		}
		p.sets = append(p.sets[:oldest], p.sets[oldest+1:]...)
	}
	p.sets = append(p.sets, s)
	return s
}

func addrsOf(key string) []string {
	if key == "" {
		return nil
	}
	return strings.Split(key, "\n")
}

// AddrSetKey is a canonical form of an address set: sorted, one a line.
func AddrSetKey(addrs []string) string {
	s := append([]string(nil), addrs...)
	sort.Strings(s)
	return strings.Join(s, "\n")
}

// settle drops backward switches older than Window and clears a flag once
// at most one address set announced within it.
func (d *TwinDetector) settle(p *twinPeer, now time.Time) {
	cut := 0
	for cut < len(p.backs) && now.Sub(p.backs[cut]) > d.cfg.Window {
		cut++
	}
	p.backs = p.backs[cut:]
	if p.flagged && len(p.ann.live(now, d.cfg.Window)) <= 1 && len(p.conn.live(now, d.cfg.Window)) <= 1 {
		p.flagged, p.since, p.reason, p.backs = false, time.Time{}, "", nil
	}
}

// live returns the sets seen within window, most recent first.
func (p *source) live(now time.Time, window time.Duration) []*addrSet {
	var out []*addrSet
	for _, s := range p.sets {
		if now.Sub(s.last) <= window {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].last.After(out[j].last) })
	return out
}

func (d *TwinDetector) reason(peer string, p *twinPeer, now time.Time) string {
	live := p.ann.live(now, d.cfg.Window)
	if c := p.conn.live(now, d.cfg.Window); len(c) > len(live) {
		live = c
	}
	names := make([]string, len(live))
	for i, s := range live {
		names[i] = describeSet(peer, s.addrs)
	}
	sort.Strings(names)
	hosts := "two hosts"
	if len(names) > 2 {
		hosts = fmt.Sprintf("%d hosts", len(names))
	}
	list := strings.Join(names, " and ")
	if len(names) > 2 {
		list = strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
	}
	return fmt.Sprintf("%s announce peer %s from different addresses: %s; both are refused until one stops", hosts, peer, list)
}

// describeSet writes an address set without the /p2p/<peer> suffixes.
func describeSet(peer string, addrs []string) string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = strings.TrimSuffix(a, "/p2p/"+peer)
	}
	return "[" + strings.Join(out, " ") + "]"
}

// Flag returns peer's flag at now, if it is flagged.
func (d *TwinDetector) Flag(peer string, now time.Time) (TwinFlag, bool) {
	p := d.peers[peer]
	if p == nil {
		return TwinFlag{}, false
	}
	d.settle(p, now)
	if !p.flagged {
		return TwinFlag{}, false
	}
	return TwinFlag{Peer: peer, Since: p.since, Reason: p.reason}, true
}

// Flags returns every flagged peer at now, sorted by peer.
func (d *TwinDetector) Flags(now time.Time) []TwinFlag {
	var out []TwinFlag
	for id, p := range d.peers {
		d.settle(p, now)
		if p.flagged {
			out = append(out, TwinFlag{Peer: id, Since: p.since, Reason: p.reason})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Peer < out[j].Peer })
	return out
}

// Sweep clears the flags due at now and forgets peers that have not
// announced for Window; it returns the peers whose flag cleared.
func (d *TwinDetector) Sweep(now time.Time) (cleared []string) {
	for id, p := range d.peers {
		was := p.flagged
		d.settle(p, now)
		if was && !p.flagged {
			cleared = append(cleared, id)
		}
		if !p.flagged && len(p.ann.live(now, d.cfg.Window)) == 0 && len(p.conn.live(now, d.cfg.Window)) == 0 {
			delete(d.peers, id)
		}
	}
	sort.Strings(cleared)
	return cleared
}
