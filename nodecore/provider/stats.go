package provider

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// What an operator watches (`tokenrouter node` on a terminal, `tokenrouter
// status`): the node's models and their load, the calls it served and the
// tokens in them, and what its account earned. The counters are kept for
// the life of the process; the earnings are the settlement peer's, asked
// for at most every EarningsMaxAge and only while someone looks.

// EarningsMaxAge is how long Stats trusts the earnings it last fetched.
const EarningsMaxAge = 10 * time.Second

// throughputWindow is how far back OutputTokPerS looks.
const throughputWindow = 10 * time.Second

// recentGateway is how long a gateway that called counts as one of the
// node's gateways; maxTrackedGateways bounds how many are remembered.
const (
	recentGateway      = 10 * time.Minute
	maxTrackedGateways = 1024
)

// Stats is a snapshot of what a node is doing.
type Stats struct {
	Peer      string       `json:"peer_id"`
	Platform  string       `json:"platform"` // the settlement peer it trusts
	Upstream  string       `json:"upstream"` // the engine's base URL, without a password or query
	Synthetic bool         `json:"synthetic,omitempty"`
	Models    []ModelStats `json:"models"`
	InFlight  int          `json:"in_flight"`               // calls in flight across models
	MaxFlight int          `json:"max_in_flight,omitempty"` // the node-wide cap (0 = none)
	Calls     CallStats    `json:"calls"`
	// TokPerS is the node's measured generation rate per call (what it
	// announces); OutputTokPerS the output tokens it served per second
	// over the last 10 s, counted as calls end.
	TokPerS       float64 `json:"tok_per_s"`
	OutputTokPerS float64 `json:"output_tok_per_s"`
	// Gateways are the gateways that called in the last 10 minutes.
	Gateways []string `json:"gateways"`
	Earnings Earnings `json:"earnings"`
}

// ModelStats is one model the node serves.
type ModelStats struct {
	Model    string `json:"model"`
	InFlight int    `json:"in_flight"`
	Capacity int    `json:"capacity"`
	Calls    int64  `json:"calls"` // calls answered in full (CallStats.Served)
}

// CallStats counts calls since the node started. Every call that reached
// the node's engine or its limits is in exactly one of Served, Failed,
// Full, Rejected or Dropped.
type CallStats struct {
	Total    int64 `json:"total"`
	Served   int64 `json:"served"`   // answered in full, with a claim (billed)
	Failed   int64 `json:"failed"`   // the node's fault: engine unreachable or failing, a model it does not serve, a stream the engine broke off (billed for what it relayed)
	Full     int64 `json:"full"`     // refused at capacity (node_full)
	Rejected int64 `json:"rejected"` // the consumer's fault (a bad request the engine refused)
	Dropped  int64 `json:"dropped"`  // the gateway left or the stream broke before the answer ended
	// Tokens in the calls the node claimed (Served, and Failed streams for
	// what they relayed).
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
}

// Earnings is the node's account as the settlement peer last reported it
// (integers in µcr). Error says why it could not be asked; the last
// values stay until an answer replaces them.
type Earnings struct {
	Account    string    `json:"account,omitempty"`
	EarnedUcr  int64     `json:"earned_ucr"`
	BalanceUcr int64     `json:"balance_ucr"`
	Earned     string    `json:"earned,omitempty"`  // in credits
	Balance    string    `json:"balance,omitempty"` // in credits
	AsOf       time.Time `json:"as_of,omitzero"`
	Error      string    `json:"error,omitempty"`
}

// callOutcome is what serve learned of one call, for callStats.
type callOutcome struct {
	status    int // the status the node answered with (0: none sent)
	nodeFault bool
	claim     p2p.NodeClaim // the trailer's claim, set once it is sealed
}

// callStats are the node's counters; the zero value is ready.
type callStats struct {
	mu       sync.Mutex
	calls    CallStats
	byModel  map[string]int64
	buckets  [10]tokBucket // output tokens per second of the throughput window
	gateways map[string]time.Time

	emu      sync.Mutex
	earnings Earnings
	fetched  time.Time     // when earnings were last asked for
	fetching chan struct{} // closed when the fetch in flight ends
}

type tokBucket struct {
	sec    int64
	tokens int64
}

// ended counts one call that serve handled, by how it ended.
func (s *callStats) ended(c *call) {
	o := &c.outcome
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls.Total++
	switch {
	case c.done:
		if o.claim.Incomplete { // the engine broke off: billed for what it relayed, yet a failure
			s.calls.Failed++
		} else {
			s.calls.Served++
			if s.byModel == nil {
				s.byModel = map[string]int64{}
			}
			s.byModel[engine.CanonicalModel(c.req.Model)]++
		}
		s.calls.PromptTokens += o.claim.PromptTokens
		s.calls.CompletionTokens += o.claim.CompletionTokens
		s.addTokens(now, o.claim.CompletionTokens)
	case o.status == http.StatusTooManyRequests:
		s.calls.Full++
	case o.nodeFault:
		s.calls.Failed++
	case o.status >= 400 && o.status < 500:
		s.calls.Rejected++
	default:
		s.calls.Dropped++
	}
	s.sawGateway(c.gw, now)
}

func (s *callStats) addTokens(now time.Time, tokens int64) {
	sec := now.Unix()
	b := &s.buckets[sec%int64(len(s.buckets))]
	if b.sec != sec {
		*b = tokBucket{sec: sec}
	}
	b.tokens += tokens
}

// throughput is the output tokens a second over the window before now.
func (s *callStats) throughput(now time.Time) float64 {
	sec := now.Unix()
	var sum int64
	for _, b := range s.buckets {
		if b.sec > sec-int64(len(s.buckets)) && b.sec <= sec {
			sum += b.tokens
		}
	}
	return float64(sum) / throughputWindow.Seconds()
}

func (s *callStats) sawGateway(gw string, now time.Time) {
	if gw == "" {
		return
	}
	if s.gateways == nil {
		s.gateways = map[string]time.Time{}
	}
	if _, ok := s.gateways[gw]; !ok && len(s.gateways) >= maxTrackedGateways {
		s.pruneGateways(now)
		if len(s.gateways) >= maxTrackedGateways {
			return
		}
	}
	s.gateways[gw] = now
}

func (s *callStats) pruneGateways(now time.Time) {
	for g, t := range s.gateways {
		if now.Sub(t) > recentGateway {
			delete(s.gateways, g)
		}
	}
}

// Stats returns a snapshot of what the node is doing, with the earnings
// last fetched (see RefreshEarnings).
func (n *Node) Stats() Stats {
	now := time.Now()
	st := Stats{
		Peer:      n.cfg.Host.IDString(),
		Platform:  n.cfg.Platform.String(),
		Upstream:  safeURL(n.cfg.Upstream.BaseURL),
		MaxFlight: n.cfg.MaxInFlight,
		Models:    []ModelStats{},
		Gateways:  []string{},
	}
	n.mu.Lock()
	st.Synthetic, st.TokPerS, st.InFlight = n.cfg.Synthetic, n.tokPerS, n.inFlight
	for _, m := range n.models {
		in := n.instances[m]
		st.Models = append(st.Models, ModelStats{Model: m, InFlight: in.inFlight, Capacity: in.capacity})
	}
	n.mu.Unlock()

	s := &n.stats
	s.mu.Lock()
	st.Calls = s.calls
	st.OutputTokPerS = s.throughput(now)
	for i := range st.Models {
		st.Models[i].Calls = s.byModel[st.Models[i].Model]
	}
	s.pruneGateways(now)
	for g := range s.gateways {
		st.Gateways = append(st.Gateways, g)
	}
	s.mu.Unlock()
	slices.Sort(st.Gateways)

	s.emu.Lock()
	st.Earnings = s.earnings
	s.emu.Unlock()
	if st.Earnings.Account == "" {
		st.Earnings.Account = n.Account()
	}
	return st
}

// safeURL is u without its password and query, which may hold credentials.
func safeURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	p.RawQuery, p.ForceQuery = "", false
	return p.Redacted()
}

// errNoAccountKey: without an account key the node cannot ask for its
// account; it earns for node:<peer id> until it is linked.
var errNoAccountKey = errors.New("no --account-key: earnings accrue to this node's own account until it is linked")

// RefreshEarnings asks the settlement peer for the account's earnings
// unless it did within maxAge, and waits for the answer until ctx ends
// (the question goes on in the background, for at most 5 s). One question
// is in flight at a time; a failed one is not repeated within maxAge
// either, so a settlement peer that is down costs one wait per maxAge.
func (n *Node) RefreshEarnings(ctx context.Context, maxAge time.Duration) {
	s := &n.stats
	s.emu.Lock()
	if !s.fetched.IsZero() && time.Since(s.fetched) < maxAge {
		s.emu.Unlock()
		return
	}
	if s.fetching == nil {
		s.fetching = make(chan struct{})
		go n.fetchEarnings(s.fetching)
	}
	done := s.fetching
	s.emu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

func (n *Node) fetchEarnings(done chan struct{}) {
	e, err := n.askEarnings()
	s := &n.stats
	s.emu.Lock()
	if err != nil {
		s.earnings.Error = err.Error()
	} else {
		s.earnings = e
	}
	s.fetched, s.fetching = time.Now(), nil
	s.emu.Unlock()
	close(done)
}

func (n *Node) askEarnings() (Earnings, error) {
	if n.cfg.AccountKey == "" {
		return Earnings{}, errNoAccountKey
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := n.cfg.Host.CallSettle(ctx, n.cfg.Platform, &p2p.SettleRequest{Op: p2p.OpAccountView, APIKey: n.cfg.AccountKey})
	if err != nil {
		return Earnings{}, err // no part of the request (the key) is in it
	}
	a := resp.Account
	if a == nil {
		return Earnings{}, errors.New("the settlement peer answered without the account")
	}
	return Earnings{
		Account: a.Account, EarnedUcr: a.EarnedUcr, BalanceUcr: a.BalanceUcr,
		Earned: a.Earned, Balance: a.Balance, AsOf: time.Now(),
	}, nil
}
