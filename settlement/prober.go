package settlement

import (
	"context"
	"crypto/rand"
	"encoding/binary"
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
// whose identity rotates (Config.ProbeRotate, never cutting a probe short); each probe is a
// gateway's call in every way a node can see: a req_ id, a grant the
// platform signed for an account (a fresh one per identity) and a hold,
// a conversation and a length drawn like consumers', streamed or not. The
// node reports its claim for a probe as for any call; settlement knows its
// probe accounts and bills those claims to no one.

// prober sends the settlement peer's probes.
type prober struct {
	s *Settlement

	mu       sync.Mutex
	id       *probeID             // the identity probes start from now
	accounts map[string]time.Time // probe accounts, until their grants expire
	rnd      *mrand.Rand
}

// probeID is one identity of the prober: a host, its grant and hold. It is
// closed once it is retired and its last probe has ended, so rotating
// never cuts a probe short (which would count against a healthy node).
type probeID struct {
	host    *p2p.Host
	dir     string // the host's data directory (its key), removed with it
	since   time.Time
	grant   *p2p.Grant
	hold    string
	users   int  // probes running on it
	retired bool // a newer identity took over
}

// release ends one probe's use of id. The caller holds p.mu.
func (id *probeID) release() {
	id.users--
	id.closeIfDone()
}

func (id *probeID) closeIfDone() {
	if id.retired && id.users == 0 && id.host != nil {
		id.host.Close()
		os.RemoveAll(id.dir)
		id.host = nil
	}
}

func newProber(s *Settlement) *prober {
	var seed [16]byte
	rand.Read(seed[:])
	return &prober{s: s, accounts: map[string]time.Time{},
		rnd: mrand.New(mrand.NewPCG(binary.LittleEndian.Uint64(seed[:8]), binary.LittleEndian.Uint64(seed[8:])))}
}

// acquire returns the identity to probe from, taking a new one when the
// current is older than ProbeRotate; the caller releases it.
func (p *prober) acquire(ctx context.Context, now time.Time) (*probeID, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.id == nil || now.Sub(p.id.since) >= p.s.cfg.ProbeRotate {
		id, err := p.newID(ctx, now)
		if err != nil {
			return nil, err
		}
		if old := p.id; old != nil {
			old.retired = true
			old.closeIfDone()
		}
		p.id = id
	}
	p.id.users++
	return p.id, nil
}

// newID starts a host with a fresh key and signs it a grant for a fresh
// account. The caller holds p.mu.
func (p *prober) newID(ctx context.Context, now time.Time) (*probeID, error) {
	dir, err := os.MkdirTemp("", "tokenrouter-probe-")
	if err != nil {
		return nil, err
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
		return nil, err
	}
	account := "acct_" + randomHex(8) // shaped like every account id; never in the ledger
	g := &p2p.Grant{Account: account, Gateway: h.IDString(), ExpiresMs: now.Add(GrantTTL).UnixMilli()}
	if err := g.Sign(p.s.cfg.Host.Key); err != nil {
		h.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	p.accounts[account] = now.Add(GrantTTL + time.Hour)
	for a, until := range p.accounts {
		if now.After(until) {
			delete(p.accounts, a)
		}
	}
	p.s.log.Debug("probing from a new identity", "peer", h.IDString())
	// A gateway's credit-line hold id (gateway/credit.go): 12 random bytes.
	return &probeID{host: h, dir: dir, since: now, grant: g, hold: "hold_" + randomHex(12)}, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// isProbe reports whether account is one the prober made up.
func (p *prober) isProbe(account string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.accounts[account]
	return ok
}

// close retires the current identity; it closes once its probes end.
func (p *prober) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.id != nil {
		p.id.retired = true
		p.id.closeIfDone()
		p.id = nil
	}
}

// probe calls model on node as a consumer's gateway would.
func (p *prober) probe(ctx context.Context, node peer.ID, model string) error {
	id, err := p.acquire(ctx, time.Now())
	if err != nil {
		return fmt.Errorf("probe host: %w", err)
	}
	defer func() {
		p.mu.Lock()
		id.release()
		p.mu.Unlock()
	}()
	// The platform knows where the node is; the probe host need not ask.
	if addrs := p.s.cfg.Host.Peerstore().Addrs(node); len(addrs) > 0 {
		id.host.Peerstore().AddAddrs(node, addrs, peerstore.TempAddrTTL)
	}
	p.mu.Lock()
	call := probeCall(p.rnd, model, id.grant, id.hold)
	p.mu.Unlock()
	return id.host.Probe(ctx, node, call, p.s.cfg.Reputation.ProbeTimeout)
}

// Probes open with ordinary requests of the kind consumers send, drawn
// from tasks x subjects (hundreds of prompts), so no fixed text marks them.
var (
	probeTasks = []string{
		"Summarize %s in two sentences.", "Explain %s to a beginner.", "Write a haiku about %s.",
		"Give me three facts about %s.", "What are the pros and cons of %s?", "Write a short tweet about %s.",
		"List five questions a student might ask about %s.", "Describe %s in one paragraph.",
		"Suggest a catchy title for an article on %s.", "Translate a one-line description of %s into French.",
		"What is a common misconception about %s?", "Compare %s with something from everyday life.",
	}
	probeSubjects = []string{
		"the water cycle", "compound interest", "remote work", "the French revolution", "black holes",
		"sourdough bread", "hash tables", "photosynthesis", "the stock market", "electric cars", "jazz",
		"the Roman empire", "machine learning", "coffee", "climate change", "chess openings", "volcanoes",
		"public transport", "the human heart", "recycling", "the Moon landing", "honeybees", "TCP/IP",
		"minimalism", "the Olympic games",
	}
)

// probePrompt draws one prompt.
func probePrompt(rnd *mrand.Rand) string {
	return fmt.Sprintf(probeTasks[rnd.IntN(len(probeTasks))], probeSubjects[rnd.IntN(len(probeSubjects))])
}

// probeCall draws one probe: a prompt, a length and streaming as consumers
// vary them.
func probeCall(rnd *mrand.Rand, model string, g *p2p.Grant, hold string) p2p.ProbeCall {
	stream := rnd.IntN(2) == 0
	body := map[string]any{
		"model":      model,
		"messages":   []map[string]string{{"role": "user", "content": probePrompt(rnd)}},
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
