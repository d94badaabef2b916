package settlement

import (
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tokenrouter/tokenrouter/internal/openai"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// Handler is the settlement peer's HTTP API.
func (s *Settlement) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/accounts", s.createAccount)
	mux.HandleFunc("GET /v1/account", s.getAccount)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status":"ok","role":"settle"}` + "\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		openai.WriteError(w, http.StatusNotFound, "invalid_request_error", "", "not_found", "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	return mux
}

// createAccount opens an account with the starting credit and returns its
// first API key, shown this once.
func (s *Settlement) createAccount(w http.ResponseWriter, r *http.Request) {
	if !s.signups.allow(clientAddr(r), time.Now()) {
		w.Header().Set("Retry-After", "3600")
		openai.WriteError(w, http.StatusTooManyRequests, "rate_limit_error", "", "rate_limited",
			"too many accounts created from this address; try again later")
		return
	}
	a, key, err := s.led.CreateAccount(s.cfg.StartingCredit)
	if err != nil {
		s.log.Error("create account", "err", err)
		openai.WriteError(w, http.StatusInternalServerError, "server_error", "", "internal_error", "could not create the account")
		return
	}
	s.metrics.accounts.Inc()
	info := accountInfo(a)
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
