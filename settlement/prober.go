package settlement

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// Probes look like consumers. A node that could tell the settlement peer's
// probes from real calls could answer probes well and consumers badly, so
// probes come from a host of the prober's own, not the platform's peer id,
// whose identity rotates (Config.ProbeRotate); each probe is a
// gateway's call in every way a node can see: a req_ id, a grant the
// platform signed for an account (a fresh one per identity) and a hold,
// a conversation and a length drawn like consumers', streamed or not. The
// node reports its claim for a probe as for any call; settlement knows its
// probe accounts and bills those claims to no one.

// prober sends the settlement peer's probes.
type prober struct {
	s *Settlement

	mu       sync.Mutex
	host     *p2p.Host
	dir      string // the host's data directory (its identity), removed on rotation
	since    time.Time
	grant    *p2p.Grant
	hold     string
	accounts map[string]time.Time // probe accounts, until their grants expire
	rnd      *mrand.Rand
}

func newProber(s *Settlement) *prober {
	var seed [16]byte
	rand.Read(seed[:])
	return &prober{s: s, accounts: map[string]time.Time{},
		rnd: mrand.New(mrand.NewPCG(binaryUint64(seed[:8]), binaryUint64(seed[8:])))}
}

func binaryUint64(b []byte) uint64 {
	var v uint64
	for _, x := range b {
		v = v<<8 | uint64(x)
	}
	return v
}

// current returns the probing host and its grant, rotating both when the
// identity is older than ProbeRotate.
func (p *prober) current(ctx context.Context, now time.Time) (*p2p.Host, *p2p.Grant, string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.host != nil && now.Sub(p.since) < p.s.cfg.ProbeRotate {
		return p.host, p.grant, p.hold, nil
	}
	p.closeLocked()
	dir, err := os.MkdirTemp("", "tokenrouter-probe-")
	if err != nil {
		return nil, nil, "", err
	}
	var boot []string
	for _, ai := range p.s.cfg.Host.Bootstrap() {
		if addrs, err := peer.AddrInfoToP2pAddrs(&ai); err == nil {
			for _, a := range addrs {
				boot = append(boot, a.String())
			}
		}
	}
	h, err := p2p.NewHost(ctx, p2p.Config{DataDir: dir, Listen: []string{"/ip4/0.0.0.0/tcp/0"}, Bootstrap: boot})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, "", err
	}
	var id [8]byte
	rand.Read(id[:])
	account := "acct_" + hex.EncodeToString(id[:]) // shaped like every account id; never in the ledger
	g := &p2p.Grant{Account: account, Gateway: h.IDString(), ExpiresMs: now.Add(GrantTTL).UnixMilli()}
	if err := g.Sign(p.s.cfg.Host.Key); err != nil {
		h.Close()
		os.RemoveAll(dir)
		return nil, nil, "", err
	}
	rand.Read(id[:])
	p.host, p.dir, p.since, p.grant, p.hold = h, dir, now, g, "hold_"+hex.EncodeToString(id[:])
	p.accounts[account] = now.Add(GrantTTL + time.Hour)
	for a, until := range p.accounts {
		if now.After(until) {
			delete(p.accounts, a)
		}
	}
	p.s.log.Debug("probing from a new identity", "peer", h.IDString())
	return h, g, p.hold, nil
}

// isProbe reports whether account is one the prober made up.
func (p *prober) isProbe(account string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.accounts[account]
	return ok
}

func (p *prober) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closeLocked()
}

func (p *prober) closeLocked() {
	if p.host != nil {
		p.host.Close()
		os.RemoveAll(p.dir)
		p.host = nil
	}
}

// probe calls model on node as a consumer's gateway would.
func (p *prober) probe(ctx context.Context, node peer.ID, model string) error {
	h, g, hold, err := p.current(ctx, time.Now())
	if err != nil {
		return fmt.Errorf("probe host: %w", err)
	}
	// The platform knows where the node is; the probe host need not ask.
	if addrs := p.s.cfg.Host.Peerstore().Addrs(node); len(addrs) > 0 {
		h.Peerstore().AddAddrs(node, addrs, peerstore.TempAddrTTL)
	}
	p.mu.Lock()
	call := probeCall(p.rnd, model, g, hold)
	p.mu.Unlock()
	return h.Probe(ctx, node, call, p.s.cfg.Reputation.ProbeTimeout)
}

// probePrompts are the conversations probes open with: short, ordinary
// requests of the kind consumers send.
var probePrompts = []string{
	"Summarize the plot of Hamlet in two sentences.",
	"What is the capital of Australia?",
	"Write a haiku about autumn rain.",
	"Explain what a hash table is to a beginner.",
	"Give me three ideas for a weekend project.",
	"Translate 'good morning' into Spanish and French.",
	"How many minutes are in a week?",
	"Suggest a name for a coffee shop by the sea.",
	"What does HTTP status 404 mean?",
	"List two pros and two cons of remote work.",
}

// probeCall draws one probe: a prompt, a length and streaming as consumers
// vary them.
func probeCall(rnd *mrand.Rand, model string, g *p2p.Grant, hold string) p2p.ProbeCall {
	stream := rnd.IntN(2) == 0
	body := map[string]any{
		"model":      model,
		"messages":   []map[string]string{{"role": "user", "content": probePrompts[rnd.IntN(len(probePrompts))]}},
		"max_tokens": 8 + rnd.IntN(57),
	}
	if rnd.IntN(3) == 0 {
		body["temperature"] = 0.7
	}
	if stream {
		body["stream"] = true
		if rnd.IntN(2) == 0 {
			body["stream_options"] = map[string]bool{"include_usage": true}
		}
	}
	b, _ := json.Marshal(body)
	return p2p.ProbeCall{
		Request: p2p.InferRequest{RequestID: p2p.NewRequestID(), Path: "/chat/completions", Model: model, Stream: stream,
			Grant: g, Hold: hold},
		Body: b,
	}
}
