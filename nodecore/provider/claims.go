package provider

import (
	"sync"
	"time"
)

// claimMemory remembers the claims this node made, per gateway, for long
// enough that gateways can ask it to sign them in batches (p2p.ClaimBatch).
type claimMemory struct {
	ttl time.Duration
	max int

	mu    sync.Mutex
	by    map[[32]byte]string // claim hash -> gateway
	order []claimAt           // oldest first, for expiry
}

type claimAt struct {
	hash [32]byte
	at   time.Time
}

func newClaimMemory(ttl time.Duration, max int) *claimMemory {
	return &claimMemory{ttl: ttl, max: max, by: map[[32]byte]string{}}
}

// add remembers a claim made for gateway at now.
func (m *claimMemory) add(gateway string, hash [32]byte, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expire(now)
	m.by[hash] = gateway
	m.order = append(m.order, claimAt{hash, now})
}

// known reports whether the node made this claim for gateway.
func (m *claimMemory) known(gateway string, hash [32]byte) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.by[hash] == gateway
}

func (m *claimMemory) expire(now time.Time) {
	i := 0
	for i < len(m.order) && (now.Sub(m.order[i].at) > m.ttl || len(m.order)-i > m.max) {
		delete(m.by, m.order[i].hash)
		i++
	}
	if i > 0 {
		m.order = append(m.order[:0], m.order[i:]...)
	}
}
