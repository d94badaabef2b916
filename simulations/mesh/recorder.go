package mesh

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// recorder keeps what the run measures: when each load change was
// published and when each gateway received it; when each node was killed
// and when each gateway's view let it go.
type recorder struct {
	mu        sync.Mutex
	measuring bool                  // load changes published now are measured
	changes   map[changeKey]*change // measured load changes
	killed    map[peer.ID]time.Time // killed hosts and when
	down      map[pairKey]time.Time // (gateway, killed) -> first Suspect/Dead report
	dead      map[pairKey]time.Time // (gateway, killed) -> first Dead report
	discon    map[pairKey]time.Time // (gateway, killed) -> last connection lost
	falseDown map[pairKey]struct{}  // reports about hosts never killed
	annBytes  int64                 // marshalled size of measured announcements, summed
}

type changeKey struct {
	node string
	seq  uint64
}

type change struct {
	at  time.Time
	got []time.Duration // one per gateway that received it, in arrival order
}

type pairKey struct {
	gateway int // host index
	peer    peer.ID
}

func newRecorder() *recorder {
	return &recorder{
		changes:   map[changeKey]*change{},
		killed:    map[peer.ID]time.Time{},
		down:      map[pairKey]time.Time{},
		dead:      map[pairKey]time.Time{},
		discon:    map[pairKey]time.Time{},
		falseDown: map[pairKey]struct{}{},
	}
}

func (r *recorder) setMeasuring(on bool) {
	r.mu.Lock()
	r.measuring = on
	r.mu.Unlock()
}

// published records a load change about to be published; it reports
// whether the change is measured.
func (r *recorder) published(node string, seq uint64, size int, at time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.measuring {
		return false
	}
	r.changes[changeKey{node, seq}] = &change{at: at}
	r.annBytes += int64(size)
	return true
}

// received records gateway gw receiving node's change seq.
func (r *recorder) received(gw int, node string, seq uint64, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.changes[changeKey{node, seq}]; ok {
		c.got = append(c.got, at.Sub(c.at))
	}
}

func (r *recorder) kill(p peer.ID, at time.Time) {
	r.mu.Lock()
	r.killed[p] = at
	r.mu.Unlock()
}

// reported records gateway gw's membership saying p is Suspect or Dead.
func (r *recorder) reported(gw int, p peer.ID, state string, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := pairKey{gw, p}
	if _, ok := r.killed[p]; !ok {
		if r.measuring {
			r.falseDown[k] = struct{}{}
		}
		return
	}
	if _, ok := r.down[k]; !ok {
		r.down[k] = at
	}
	if _, ok := r.dead[k]; !ok && state == stateDead {
		r.dead[k] = at
	}
}

// disconnected records gateway gw losing its last connection to p.
func (r *recorder) disconnected(gw int, p peer.ID, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.killed[p]; !ok {
		return
	}
	k := pairKey{gw, p}
	if _, ok := r.discon[k]; !ok {
		r.discon[k] = at
	}
}

// Membership states the recorder tells apart.
const (
	stateSuspect = "suspect"
	stateDead    = "dead"
)
