package settlement

import (
	"errors"
	"fmt"
	"strconv"

	"encoding/json"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/tokenrouter/tokenrouter/settlement/ledger"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tokenrouter/tokenrouter/internal/openai"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// Handler is the settlement peer's HTTP API.
func (s *Settlement) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/accounts", s.createAccount)
	mux.HandleFunc("GET /v1/account", s.getAccount)
	mux.HandleFunc("GET /v1/account/transactions", s.getTransactions)
	mux.HandleFunc("GET /v1/receipts/{request_id}/proof", s.getReceiptProof)
	mux.HandleFunc("GET /v1/keys", s.listKeys)
	mux.HandleFunc("POST /v1/keys", s.postKey)
	mux.HandleFunc("DELETE /v1/keys/{id}", s.deleteKey)
	mux.HandleFunc("GET /v1/bounties", s.getBounties)
	mux.HandleFunc("GET /v1/nodes", s.getNodes)
	mux.HandleFunc("GET /v1/network", s.getNetwork)
	mux.HandleFunc("POST /v1/nodes/cloud", s.createCloudNode)
	mux.HandleFunc("GET /v1/nodes/cloud", s.listCloudNodes)
	mux.HandleFunc("GET /v1/nodes/cloud/{id}", s.getCloudNode)
	mux.HandleFunc("DELETE /v1/nodes/cloud/{id}", s.deleteCloudNode)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status":"ok","role":"settle"}` + "\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	s.dashboard(mux) // `/` and everything not above, for people; API clients still get OpenAI's errors
	return mux
}

// errSignupLimit: too many accounts from one client address.
var errSignupLimit = errors.New("settlement: too many accounts created from this address")

// signup opens an account with the starting credit for the client of r,
// within the per-address limit, and returns it with its first API key.
// POST /v1/accounts and the dashboard's sign-up both come here.
func (s *Settlement) signup(r *http.Request) (ledger.AccountState, string, error) {
	if !s.signups.allow(clientAddr(r), time.Now()) {
		return ledger.AccountState{}, "", errSignupLimit
	}
	a, key, err := s.led.CreateAccount(s.cfg.StartingCredit)
	if err != nil {
		s.log.Error("create account", "err", err)
		return ledger.AccountState{}, "", err
	}
	s.metrics.accounts.Inc()
	return a, key, nil
}

// createAccount opens an account with the starting credit and returns its
// first API key, shown this once.
func (s *Settlement) createAccount(w http.ResponseWriter, r *http.Request) {
	a, key, err := s.signup(r)
	switch {
	case errors.Is(err, errSignupLimit):
		w.Header().Set("Retry-After", "3600")
		openai.WriteError(w, http.StatusTooManyRequests, "rate_limit_error", "", "rate_limited",
			"too many accounts created from this address; try again later")
		return
	case err != nil:
		openai.WriteError(w, http.StatusInternalServerError, "server_error", "", "internal_error", "could not create the account")
		return
	}
	info := s.accountInfo(a)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(struct {
		APIKey string `json:"api_key"`
		*p2p.AccountInfo
	}{key, info})
}

func (s *Settlement) getAccount(w http.ResponseWriter, r *http.Request) {
	key, ok := openai.BearerKey(r)
	if !ok {
		openai.WriteError(w, http.StatusUnauthorized, "invalid_request_error", "", "invalid_api_key", "missing API key: send Authorization: Bearer <key>")
		return
	}
	resp := s.account(key)
	if resp.Error != nil {
		openai.WriteError(w, http.StatusUnauthorized, "invalid_request_error", "", "invalid_api_key", "invalid API key")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp.Account)
}

// clientAddr is the address account creation is rate-limited by.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return strings.ToLower(host)
}

// getTransactions pages through the caller's transfers, newest first:
// ?limit=N (default 50, at most 1000) and ?cursor= from the last page's next_cursor.
func (s *Settlement) getTransactions(w http.ResponseWriter, r *http.Request) {
	key, ok := openai.BearerKey(r)
	if !ok {
		openai.WriteError(w, http.StatusUnauthorized, "invalid_request_error", "", "invalid_api_key", "missing API key: send Authorization: Bearer <key>")
		return
	}
	account, err := s.led.AccountByKey(key)
	if err != nil {
		openai.WriteError(w, http.StatusUnauthorized, "invalid_request_error", "", "invalid_api_key", "invalid API key")
		return
	}
	limit := ledger.DefaultTxPageSize
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > ledger.MaxTxPageSize {
			openai.WriteError(w, http.StatusBadRequest, "invalid_request_error", "limit", "invalid_value",
				fmt.Sprintf("limit must be an integer from 1 to %d", ledger.MaxTxPageSize))
			return
		}
		limit = n
	}
	txs, next, err := s.led.Transactions(account, r.URL.Query().Get("cursor"), limit)
	if err != nil {
		openai.WriteError(w, http.StatusBadRequest, "invalid_request_error", "cursor", "invalid_value", "bad cursor")
		return
	}
	if txs == nil {
		txs = []ledger.TxRecord{}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(struct {
		Object     string            `json:"object"`
		Account    string            `json:"account"`
		Data       []ledger.TxRecord `json:"data"`
		HasMore    bool              `json:"has_more"`
		NextCursor string            `json:"next_cursor,omitempty"`
	}{"list", account, txs, next != "", next})
}

// keyAccount resolves the bearer key (of any scope: reading an account is
// what a node's key is for), writing the error itself when it fails.
func (s *Settlement) keyAccount(w http.ResponseWriter, r *http.Request) (string, bool) {
	k, ok := s.bearerKey(w, r)
	return k.Account, ok
}

// managingAccount is keyAccount for what changes the account (its keys,
// its hosted nodes): a node's key is refused.
func (s *Settlement) managingAccount(w http.ResponseWriter, r *http.Request) (string, bool) {
	k, ok := s.bearerKey(w, r)
	if ok && k.Scope != ledger.ScopeAccount {
		openai.WriteError(w, http.StatusForbidden, "permission_error", "", "key_scope", nodeKeyMessage)
		return "", false
	}
	return k.Account, ok
}

// nodeKeyMessage says what a node's key cannot do.
const nodeKeyMessage = "this API key is a node's: it links the node to its account and reads the account, " +
	"and cannot pay for calls, sign in or manage keys and nodes; use a key of the account"

func (s *Settlement) bearerKey(w http.ResponseWriter, r *http.Request) (ledger.KeyRecord, bool) {
	key, ok := openai.BearerKey(r)
	if !ok {
		openai.WriteError(w, http.StatusUnauthorized, "invalid_request_error", "", "invalid_api_key", "missing API key: send Authorization: Bearer <key>")
		return ledger.KeyRecord{}, false
	}
	k, ok := s.led.KeyByHash(ledger.KeyHash(key))
	if !ok {
		openai.WriteError(w, http.StatusUnauthorized, "invalid_request_error", "", "invalid_api_key", "invalid API key")
		return ledger.KeyRecord{}, false
	}
	return k, true
}

// nodeView is one of an account's nodes as the platform sees it.
type nodeView struct {
	Node      string              `json:"node"`
	Instances []p2p.InstanceScore `json:"instances"` // live ones: health score and ramp-up per model
	// Status is "ok", or why the network refuses the node (Reason in words,
	// since RefusedSinceMs): p2p.RefusedDuplicateIdentity when two hosts
	// announce its peer id.
	Status            string `json:"status"`
	Reason            string `json:"reason,omitempty"`
	DuplicateIdentity string `json:"duplicate_identity,omitempty"`
	RefusedSinceMs    int64  `json:"refused_since_ms,omitempty"`
	// Disputes are its calls whose claim and receipt disagreed.
	Disputes int64 `json:"disputes"`
	// Models is every model it announced, live or not, as the dashboard
	// shows them: load, rate, health, ramp-up, earnings and lost calls.
	Models []InstanceView `json:"models"`
}

// getNodes is GET /v1/nodes: the nodes linked to the caller's account.
func (s *Settlement) getNodes(w http.ResponseWriter, r *http.Request) {
	account, ok := s.keyAccount(w, r)
	if !ok {
		return
	}
	scores := s.rep.Scores(time.Now())
	out := []nodeView{}
	for _, n := range s.led.Nodes(account) {
		v := nodeView{Node: n, Instances: []p2p.InstanceScore{}, Status: "ok", Disputes: s.Disputes("node", n), Models: s.rep.Node(n, time.Now())}
		if v.Models == nil {
			v.Models = []InstanceView{}
		}
		if ref, ok := s.rep.Refusal(n, time.Now()); ok {
			v.Status, v.Reason, v.RefusedSinceMs = ref.Status, ref.Reason, ref.SinceMs
			if ref.Status == p2p.RefusedDuplicateIdentity {
				v.DuplicateIdentity = ref.Reason
			}
		}
		for _, sc := range scores {
			if sc.Node == n {
				v.Instances = append(v.Instances, sc)
			}
		}
		out = append(out, v)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(struct {
		Object  string     `json:"object"`
		Account string     `json:"account"`
		Data    []nodeView `json:"data"`
	}{"list", account, out})
}

// modelView is one model of the network view.
type modelView struct {
	Model       string  `json:"model"`
	Instances   int     `json:"instances"`
	Capacity    int     `json:"capacity"`
	InFlight    int     `json:"in_flight"`
	Unserved    float64 `json:"unserved_per_minute"`
	UnderSupply float64 `json:"under_supply"`
}

// getNetwork is GET /v1/network: every model's live supply and demand.
// It holds nothing private: the same facts travel in gossip.
func (s *Settlement) getNetwork(w http.ResponseWriter, _ *http.Request) {
	out := s.networkView(time.Now()) // the dashboard's network section shows the same
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(struct {
		Object   string        `json:"object"`
		Data     []modelView   `json:"data"`
		Gateways []gatewayView `json:"gateways"` // gateways with disputes or calls they sent no receipt for
	}{"list", out, s.gatewayViews()})
}
