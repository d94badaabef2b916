package settlement

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/internal/openai"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/nodecore/provider"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// CloudNode is a hosted cloud node as the HTTP API shows it. It never holds
// the API token: TokenSet only says one is kept (sealed).
type CloudNode struct {
	ID           string   `json:"id"`
	Object       string   `json:"object"` // "cloud_node"
	Account      string   `json:"account"`
	PeerID       string   `json:"peer_id"` // the node's libp2p identity: gateways show it as x-tokenrouter-node
	BaseURL      string   `json:"base_url"`
	Models       []string `json:"models"`        // as registered; empty = every model the upstream lists
	ServedModels []string `json:"served_models"` // what it serves now (empty until serving)
	Capacity     int      `json:"capacity"`
	Status       string   `json:"status"`          // starting, serving, failed, stopped
	Error        string   `json:"error,omitempty"` // why it last failed
	TokenSet     bool     `json:"token_set"`
	Created      int64    `json:"created"` // unix seconds
}

// cloudRequest is POST /v1/nodes/cloud's body.
type cloudRequest struct {
	BaseURL  string   `json:"base_url"`
	APIToken string   `json:"api_token"`
	Models   []string `json:"models"`
	Capacity int      `json:"capacity"`
}

// Bounds on a registration's fields.
const (
	maxCloudBody   = 64 << 10
	minTokenLen    = 8 // shorter tokens would make redacting logs mangle them
	maxTokenLen    = 4096
	maxCloudModels = 64
	maxModelName   = 256
)

// cloudOn resolves the caller's account and checks hosted nodes are on,
// writing the error itself when not.
func (s *Settlement) cloudOn(w http.ResponseWriter, r *http.Request) (string, bool) {
	account, ok := s.managingAccount(w, r)
	if !ok {
		return "", false
	}
	if s.cloud == nil {
		openai.WriteError(w, http.StatusNotFound, "invalid_request_error", "", "not_enabled",
			"hosted cloud nodes are not enabled on this settlement peer")
		return "", false
	}
	return account, true
}

// createCloudNode is POST /v1/nodes/cloud: check the upstream answers
// /models with the token, seal the token, link a new node identity to the
// caller's account and start the node.
func (s *Settlement) createCloudNode(w http.ResponseWriter, r *http.Request) {
	account, ok := s.cloudOn(w, r)
	if !ok {
		return
	}
	var req cloudRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxCloudBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		openai.WriteError(w, http.StatusBadRequest, "invalid_request_error", "", "invalid_json",
			"the body must be a JSON object {\"base_url\",\"api_token\",\"models\",\"capacity\"}: "+jsonProblem(err))
		return
	}
	view, cerr := s.registerCloud(r.Context(), account, req)
	if cerr != nil {
		openai.WriteError(w, cerr.status, cerr.typ, cerr.param, cerr.code, cerr.msg)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(view)
}

// cloudError is why a registration failed, in OpenAI's error terms; its
// message never quotes the token.
type cloudError struct {
	status                int
	typ, param, code, msg string
}

// registerCloud checks a registration, checks the upstream answers with the
// token, seals the token, links a new node identity to account and starts
// the node. The HTTP API and the dashboard both register through it.
func (s *Settlement) registerCloud(ctx context.Context, account string, req cloudRequest) (CloudNode, *cloudError) {
	bad := func(param, code, msg string) *cloudError {
		return &cloudError{http.StatusBadRequest, "invalid_request_error", param, code, msg}
	}
	internal := &cloudError{http.StatusInternalServerError, "server_error", "", "internal_error", "could not register the cloud node"}
	in, param, msg := s.cloud.validate(req)
	if msg != "" {
		return CloudNode{}, bad(param, "invalid_value", msg)
	}
	if err := allowed(in.BaseURL, s.cloud.cfg.AllowPrivate); err != nil {
		return CloudNode{}, bad("base_url", "upstream_not_allowed", "base_url is not allowed: "+notAllowedText(err))
	}
	if err := s.cloud.full(account); err != nil {
		return CloudNode{}, bad("", "too_many_nodes", err.Error())
	}
	if code, param, msg := s.cloud.check(ctx, in); msg != "" {
		return CloudNode{}, bad(param, code, msg)
	}
	rec, err := s.cloud.newRecord(account, in)
	if err != nil {
		s.log.Error("cloud node: create", "err", redact(err.Error(), in.APIToken))
		return CloudNode{}, internal
	}
	view, err := s.cloud.add(rec, in.APIToken)
	if err != nil {
		os.RemoveAll(s.cloud.dir(rec.ID))
	}
	switch {
	case errors.Is(err, errCloudFull), errors.Is(err, errCloudAccountFull):
		return CloudNode{}, bad("", "too_many_nodes", err.Error())
	case err != nil:
		s.log.Error("cloud node: save", "err", redact(err.Error(), in.APIToken))
		return CloudNode{}, internal
	}
	s.log.Info("hosted cloud node registered", "cloud_node", rec.ID, "peer", rec.PeerID, "account", account,
		"base_url", rec.BaseURL, "models", rec.Models, "capacity", rec.Capacity)
	return view, nil
}

// jsonProblem describes a decoding error without quoting the body.
func jsonProblem(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var big *http.MaxBytesError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("invalid JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		return fmt.Sprintf("field %q must be %s", typ.Field, engine.JSONTypeOf(typ.Type.String()))
	case errors.As(err, &big):
		return fmt.Sprintf("larger than %d bytes", big.Limit)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return strings.TrimPrefix(err.Error(), "json: ")
	}
	return "invalid JSON"
}

// validate checks a registration's fields and normalises them. It returns
// the failing field and a message that never quotes the token.
func (c *cloudNodes) validate(req cloudRequest) (cloudRequest, string, string) {
	base, msg := checkBaseURL(req.BaseURL)
	if msg != "" {
		return req, "base_url", msg
	}
	req.BaseURL = base
	req.APIToken = strings.TrimSpace(req.APIToken)
	switch {
	case req.APIToken == "":
		return req, "api_token", "api_token is required: the provider API key the node calls the upstream with"
	case len(req.APIToken) < minTokenLen || len(req.APIToken) > maxTokenLen:
		return req, "api_token", fmt.Sprintf("api_token must be %d to %d characters", minTokenLen, maxTokenLen)
	case strings.IndexFunc(req.APIToken, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0:
		return req, "api_token", "api_token must be printable ASCII without spaces"
	}
	if len(req.Models) > maxCloudModels {
		return req, "models", fmt.Sprintf("at most %d models", maxCloudModels)
	}
	models := []string{}
	for _, m := range req.Models {
		m = strings.TrimSpace(m)
		switch {
		case m == "" || len(m) > maxModelName:
			return req, "models", fmt.Sprintf("model names must be 1 to %d characters", maxModelName)
		case slices.Contains(models, m):
			return req, "models", fmt.Sprintf("model %q is listed twice", m)
		}
		models = append(models, m)
	}
	req.Models = models
	if req.Capacity == 0 {
		req.Capacity = provider.DefaultConfig().Capacity
	}
	if req.Capacity < 1 || req.Capacity > c.cfg.MaxCapacity {
		return req, "capacity", fmt.Sprintf("capacity must be 1 to %d concurrent calls (0 = %d)",
			c.cfg.MaxCapacity, provider.DefaultConfig().Capacity)
	}
	return req, "", ""
}

// checkBaseURL accepts an absolute http(s) URL without credentials, query or
// fragment. Which of them may be called is allowed's to say.
func checkBaseURL(s string) (string, string) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", "base_url is required: the provider's OpenAI-compatible base URL, e.g. https://api.openai.com/v1"
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return "", "base_url must be an absolute http(s) URL, e.g. https://api.openai.com/v1"
	}
	switch {
	case u.User != nil:
		return "", "base_url must not hold credentials: send the token in api_token"
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", "base_url must not have a query or fragment"
	case u.Scheme == "https", u.Scheme == "http":
	default:
		return "", "base_url must be an http(s) URL"
	}
	return strings.TrimRight(u.String(), "/"), ""
}

// check asks the upstream for its models with the token, within
// CheckTimeout, and checks it serves the models asked for. It returns an
// error code, field and message, all free of the token ("" when it passes).
func (c *cloudNodes) check(ctx context.Context, in cloudRequest) (string, string, string) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CheckTimeout)
	defer cancel()
	ms, err := c.upstream(in.BaseURL, in.APIToken).Models(ctx)
	var se *engine.StatusError
	switch {
	case errors.Is(err, ErrUpstreamNotAllowed):
		return "upstream_not_allowed", "base_url", fmt.Sprintf("the settlement peer may not call the upstream at %s: %s",
			in.BaseURL, notAllowedText(err))
	case errors.As(err, &se) && (se.StatusCode == http.StatusUnauthorized || se.StatusCode == http.StatusForbidden):
		return "upstream_auth_failed", "api_token", fmt.Sprintf("the upstream at %s refused the API token (HTTP %d: %s)",
			in.BaseURL, se.StatusCode, clip(redact(se.Message, in.APIToken), 200))
	case errors.As(err, &se):
		return "upstream_error", "base_url", fmt.Sprintf("the upstream at %s answered GET /models with HTTP %d: %s",
			in.BaseURL, se.StatusCode, clip(redact(se.Message, in.APIToken), 200))
	case err != nil:
		return "upstream_unreachable", "base_url", fmt.Sprintf("could not list the models of the upstream at %s within %s: %s",
			in.BaseURL, c.cfg.CheckTimeout, clip(redact(err.Error(), in.APIToken), 300))
	}
	listed := make([]string, len(ms))
	for i, m := range ms {
		listed[i] = m.ID
	}
	if len(in.Models) == 0 && len(listed) == 0 {
		return "no_models", "models", "the upstream lists no models: name the models to serve in models"
	}
	for _, m := range in.Models {
		if !slices.Contains(listed, m) {
			return "model_not_found", "models", fmt.Sprintf("the upstream does not list model %q; it lists: %s",
				m, clip(strings.Join(listed, ", "), 500))
		}
	}
	return "", "", ""
}

// notAllowedText is the policy's own words from an error matching
// ErrUpstreamNotAllowed, without the URL and dial details wrapped around it.
func notAllowedText(err error) string {
	var na *notAllowedError
	if errors.As(err, &na) {
		return na.Error()
	}
	return strings.TrimPrefix(err.Error(), ErrUpstreamNotAllowed.Error()+": ")
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// newRecord gives a registration an id and a libp2p identity of its own,
// links that identity to account and seals the token.
func (c *cloudNodes) newRecord(account string, in cloudRequest) (cloudRecord, error) {
	var b [10]byte
	rand.Read(b[:])
	rec := cloudRecord{ID: "cn_" + hex.EncodeToString(b[:]), Account: account, BaseURL: in.BaseURL,
		Models: in.Models, Capacity: in.Capacity, Created: time.Now().UTC().Truncate(time.Second)}
	key, err := p2p.LoadOrCreateIdentity(c.dir(rec.ID))
	if err != nil {
		return rec, err
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return rec, err
	}
	rec.PeerID = id.String()
	if err := c.s.led.LinkNode(rec.PeerID, account); err != nil {
		return rec, err
	}
	return rec, c.store.seal(&rec, in.APIToken)
}

// listCloudNodes is GET /v1/nodes/cloud: the caller's hosted nodes.
func (s *Settlement) listCloudNodes(w http.ResponseWriter, r *http.Request) {
	account, ok := s.cloudOn(w, r)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(struct {
		Object  string      `json:"object"`
		Account string      `json:"account"`
		Data    []CloudNode `json:"data"`
	}{"list", account, s.cloud.list(account)})
}

// getCloudNode is GET /v1/nodes/cloud/{id}.
func (s *Settlement) getCloudNode(w http.ResponseWriter, r *http.Request) {
	account, ok := s.cloudOn(w, r)
	if !ok {
		return
	}
	v, ok := s.cloud.get(account, r.PathValue("id"))
	if !ok {
		cloudNotFound(w)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// deleteCloudNode is DELETE /v1/nodes/cloud/{id}: stop the node, forget its
// token and delete its identity.
func (s *Settlement) deleteCloudNode(w http.ResponseWriter, r *http.Request) {
	account, ok := s.cloudOn(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	found, err := s.cloud.remove(account, id)
	switch {
	case !found:
		cloudNotFound(w)
		return
	case err != nil:
		s.log.Error("cloud node: delete", "cloud_node", id, "err", err)
		openai.WriteError(w, http.StatusInternalServerError, "server_error", "", "internal_error", "could not delete the cloud node")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Deleted bool   `json:"deleted"`
	}{id, "cloud_node.deleted", true})
}

func cloudNotFound(w http.ResponseWriter) {
	openai.WriteError(w, http.StatusNotFound, "invalid_request_error", "id", "not_found", "no such cloud node on this account")
}
