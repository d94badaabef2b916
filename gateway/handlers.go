package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tokenrouter/tokenrouter/internal/openai"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// Handler is the gateway's OpenAI-compatible HTTP API.
func (g *Gateway) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions", g.inference("/chat/completions"))
	mux.HandleFunc("POST /v1/completions", g.inference("/completions"))
	mux.HandleFunc("POST /v1/embeddings", g.inference("/embeddings"))
	mux.HandleFunc("GET /v1/models", g.withRequestID(g.models))
	mux.HandleFunc("GET /v1/models/{model...}", g.withRequestID(g.model))
	mux.HandleFunc("GET /v1/account", g.withRequestID(g.account))
	mux.HandleFunc("GET /healthz", g.withRequestID(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status":"ok","role":"gateway"}` + "\n"))
	}))
	mux.Handle("GET /metrics", promhttp.HandlerFor(g.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /debug/instances", g.withRequestID(g.debugInstances))
	mux.HandleFunc("/", g.withRequestID(func(w http.ResponseWriter, r *http.Request) {
		openai.WriteError(w, http.StatusNotFound, "invalid_request_error", "", "unknown_url",
			"unknown request URL: "+r.Method+" "+r.URL.Path)
	}))
	return mux
}

func (g *Gateway) withRequestID(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(HeaderRequestID, newRequestID())
		h(w, r)
	}
}

// authorize checks the bearer key, writing the error itself when it fails.
func (g *Gateway) authorize(w http.ResponseWriter, r *http.Request) (key string, ok bool) {
	key, ok = openai.BearerKey(r)
	if !ok {
		openai.WriteError(w, http.StatusUnauthorized, "invalid_request_error", "", "invalid_api_key", "missing API key: send Authorization: Bearer <key>")
		return "", false
	}
	_, err := g.auth.check(r.Context(), key)
	switch {
	case errors.Is(err, errUnknownKey):
		openai.WriteError(w, http.StatusUnauthorized, "invalid_request_error", "", "invalid_api_key", "invalid API key")
		return "", false
	case errors.Is(err, errNodeKey):
		openai.WriteError(w, http.StatusForbidden, "permission_error", "", "key_scope", nodeKeyMessage)
		return "", false
	case err != nil:
		w.Header().Set("Retry-After", "2")
		openai.WriteError(w, http.StatusServiceUnavailable, "server_error", "", "settlement_unavailable", "the settlement peer cannot be reached; retry shortly")
		return "", false
	}
	return key, true
}

// modelEntry is one model in GET /v1/models: OpenAI's fields plus the live
// instances and the price (µcr per 1M input/output tokens).
type modelEntry struct {
	ID        string         `json:"id"`
	Object    string         `json:"object"`
	Created   int64          `json:"created"`
	OwnedBy   string         `json:"owned_by"`
	Instances []InstanceInfo `json:"instances"`
	Price     modelPrice     `json:"price"`
}

type modelPrice struct {
	Input  int64  `json:"input"`
	Output int64  `json:"output"`
	Unit   string `json:"unit"`
}

func (g *Gateway) models(w http.ResponseWriter, r *http.Request) {
	if _, ok := g.authorize(w, r); !ok {
		return
	}
	list := struct {
		Object string       `json:"object"`
		Data   []modelEntry `json:"data"`
	}{Object: "list", Data: []modelEntry{}}
	now := time.Now().Unix()
	for _, m := range g.view.Listed() {
		list.Data = append(list.Data, g.modelEntry(m, now))
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(list)
}

// model is GET /v1/models/{model}: one model as GET /v1/models lists it,
// or 404 when a call to it would get 404. Model ids may hold slashes
// ("Qwen/Qwen2.5-7B-Instruct").
func (g *Gateway) model(w http.ResponseWriter, r *http.Request) {
	if _, ok := g.authorize(w, r); !ok {
		return
	}
	id := engine.CanonicalModel(r.PathValue("model"))
	for _, m := range g.view.Listed() {
		if m.ID == id {
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(g.modelEntry(m, time.Now().Unix()))
			return
		}
	}
	openai.WriteError(w, http.StatusNotFound, "invalid_request_error", "model", "model_not_found",
		"the model "+strconv.Quote(id)+" has no live instance on the network")
}

func (g *Gateway) modelEntry(m ModelInfo, now int64) modelEntry {
	p := g.price(m.ID)
	return modelEntry{
		ID: m.ID, Object: "model", Created: now, OwnedBy: "tokenrouter",
		Instances: m.Instances,
		Price:     modelPrice{Input: p.InputPer1M, Output: p.OutputPer1M, Unit: "ucr per 1M tokens"},
	}
}

func (g *Gateway) account(w http.ResponseWriter, r *http.Request) {
	key, ok := openai.BearerKey(r)
	if !ok {
		openai.WriteError(w, http.StatusUnauthorized, "invalid_request_error", "", "invalid_api_key", "missing API key: send Authorization: Bearer <key>")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	resp, err := g.cfg.Host.CallSettle(ctx, g.cfg.Platform, &p2p.SettleRequest{Op: p2p.OpAccount, APIKey: key})
	var rpcErr *p2p.RPCError
	switch {
	case errors.As(err, &rpcErr) && rpcErr.Code == p2p.CodeUnknownKey:
		openai.WriteError(w, http.StatusUnauthorized, "invalid_request_error", "", "invalid_api_key", "invalid API key")
		return
	case err != nil || resp.Account == nil:
		w.Header().Set("Retry-After", "2")
		openai.WriteError(w, http.StatusServiceUnavailable, "server_error", "", "settlement_unavailable", "the settlement peer cannot be reached; retry shortly")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp.Account)
}

// debugInstances shows every instance as this gateway's router sees it:
// spare capacity, tok/s, breaker state, ramp-up and health score. The same
// facts travel in gossip, but a gateway open to the internet would show
// them to anyone who asked; like every /v1 call it takes an API key.
func (g *Gateway) debugInstances(w http.ResponseWriter, r *http.Request) {
	if _, ok := g.authorize(w, r); !ok {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(struct {
		Gateway string      `json:"gateway"`
		Models  []ModelInfo `json:"models"`
	}{g.cfg.Host.ID().String(), g.view.DebugModels()})
}
