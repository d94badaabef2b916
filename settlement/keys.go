package settlement

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/tokenrouter/tokenrouter/internal/openai"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// maxKeyChanges bounds the keys an account creates and revokes an hour:
// each revocation goes to every gateway.
const maxKeyChanges = 100

// errKeyChurn refuses key changes past maxKeyChanges an hour.
var errKeyChurn = fmt.Errorf("at most %d API keys created or revoked an hour; try again later", maxKeyChanges)

// createKey issues another API key for account; the key is returned once.
func (s *Settlement) createKey(account, name, scope string) (string, ledger.APIKeyInfo, error) {
	if !s.keyChanges.allow(account, time.Now()) {
		return "", ledger.APIKeyInfo{}, errKeyChurn
	}
	key, info, err := s.led.NewAPIKey(account, name, scope)
	if err == nil {
		s.log.Info("API key created", "account", account, "key", info.ID, "scope", scope)
	}
	return key, info, err
}

// revokeKey revokes account's key id in the ledger, then tells every
// gateway at once: they cache checked keys for a few seconds, and a
// revoked key must not spend for even that long.
func (s *Settlement) revokeKey(account, id string) error {
	if !s.keyChanges.allow(account, time.Now()) {
		return errKeyChurn
	}
	hash, err := s.led.RevokeAPIKeyID(account, id)
	if err != nil {
		return err
	}
	s.log.Info("API key revoked", "account", account, "key", id)
	s.announceRevoked(hash)
	return nil
}

// announceRevoked tells every gateway that the keys with these hashes are
// revoked: on the gossip topic for all of them, and straight to each one
// subscribed to it that this peer is connected to, waiting (up to 2 s) for
// each to acknowledge. When it returns, those gateways refuse the keys.
func (s *Settlement) announceRevoked(hashes ...string) {
	if s.revoked == nil {
		return
	}
	r := &p2p.KeyRevocation{TimeMs: time.Now().UnixMilli(), KeyHashes: hashes}
	data, _ := json.Marshal(r)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.revoked.Publish(ctx, data); err != nil {
		s.log.Warn("publish key revocation (gateways still drop it within their auth TTL)", "err", err)
	}
	var wg sync.WaitGroup
	for _, gw := range s.cfg.Host.PubSub.ListPeers(p2p.TopicRevoked) {
		wg.Go(func() {
			if err := s.cfg.Host.SendRevoke(ctx, gw, r); err != nil {
				s.log.Debug("key revocation not acknowledged; the gossip copy still reaches it", "gateway", gw, "err", err)
			}
		})
	}
	wg.Wait()
}

// joinRevoked joins the revocation topic this peer publishes on.
func joinRevoked(h *p2p.Host) (*pubsub.Topic, error) { return p2p.JoinRevokedTopic(h, h.ID(), nil) }

// keysResponse is GET /v1/keys.
type keysResponse struct {
	Object  string              `json:"object"`
	Account string              `json:"account"`
	Data    []ledger.APIKeyInfo `json:"data"`
}

// listKeys is GET /v1/keys: the caller's API keys, without the keys.
func (s *Settlement) listKeys(w http.ResponseWriter, r *http.Request) {
	account, ok := s.managingAccount(w, r)
	if !ok {
		return
	}
	keys := s.led.APIKeys(account)
	if keys == nil {
		keys = []ledger.APIKeyInfo{}
	}
	writeJSON(w, http.StatusOK, keysResponse{"list", account, keys})
}

// postKey is POST /v1/keys {"name": ...}: a new key, shown this once.
func (s *Settlement) postKey(w http.ResponseWriter, r *http.Request) {
	account, ok := s.managingAccount(w, r)
	if !ok {
		return
	}
	var req struct {
		Name  string `json:"name"`
		Scope string `json:"scope"` // "account" (the default) or "node"
	}
	if r.ContentLength != 0 {
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
			openai.WriteError(w, http.StatusBadRequest, "invalid_request_error", "", "invalid_json", "the body must be JSON: {\"name\": \"...\", \"scope\": \"account\" or \"node\"}")
			return
		}
	}
	if req.Scope == "" {
		req.Scope = ledger.ScopeAccount
	}
	key, info, err := s.createKey(account, req.Name, req.Scope)
	if err != nil {
		writeKeyError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, struct {
		APIKey string `json:"api_key"`
		ledger.APIKeyInfo
	}{key, info})
}

// deleteKey is DELETE /v1/keys/{id}: revoke one of the caller's keys,
// effective at once on every gateway.
func (s *Settlement) deleteKey(w http.ResponseWriter, r *http.Request) {
	account, ok := s.managingAccount(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	if err := s.revokeKey(account, id); err != nil {
		writeKeyError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Deleted bool   `json:"deleted"`
	}{id, "api_key", true})
}

func writeKeyError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, errKeyChurn):
		w.Header().Set("Retry-After", "600")
		openai.WriteError(w, http.StatusTooManyRequests, "rate_limit_error", "", "rate_limited", err.Error())
	case errors.Is(err, ledger.ErrUnknownKey):
		openai.WriteError(w, http.StatusNotFound, "invalid_request_error", "id", "key_not_found", "no such API key on this account")
	case errors.Is(err, ledger.ErrInvalid):
		openai.WriteError(w, http.StatusBadRequest, "invalid_request_error", "name", "invalid_value", strings.TrimPrefix(err.Error(), ledger.ErrInvalid.Error()+": "))
	default:
		openai.WriteError(w, http.StatusInternalServerError, "server_error", "", "internal_error", "could not change the API keys")
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
