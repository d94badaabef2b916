package settlement

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/tokenrouter/tokenrouter/internal/openai"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// getReceiptProof serves GET /v1/receipts/{request_id}/proof: the inclusion
// proof (ledger.Proof) that the call's transfers are in a batch this peer
// signed, checked offline with ledger.VerifyProof or `tokenrouter ledger
// prove --proof FILE --platform <this peer's id>`. Only the call's consumer
// and the owner of the node that served it may see it; to anyone else, as
// to a call that does not exist, it is a 404, so the endpoint does not tell
// which calls exist.
func (s *Settlement) getReceiptProof(w http.ResponseWriter, r *http.Request) {
	account, ok := s.keyAccount(w, r)
	if !ok {
		return
	}
	id := r.PathValue("request_id")
	proofs, err := s.led.Proofs(id)
	if err != nil && !errors.Is(err, ledger.ErrNotFound) && !errors.Is(err, ledger.ErrUnprovable) {
		s.log.Error("receipt proof", "request", id, "err", err)
		openai.WriteError(w, http.StatusInternalServerError, "server_error", "", "internal_error", "could not build the proof")
		return
	}
	for _, p := range proofs {
		if s.mayProve(account, p) {
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(p)
			return
		}
	}
	openai.WriteError(w, http.StatusNotFound, "invalid_request_error", "", "not_found",
		"no settled call "+id+" of this account")
}

// mayProve reports whether account may see p: it paid for the call, or it
// was paid for it (its node was linked to it), or the node paid is linked
// to it now.
func (s *Settlement) mayProve(account string, p *ledger.Proof) bool {
	for _, l := range p.Leaves {
		t := &l.Transfer
		if t.From == account || t.To == account {
			return true
		}
		if node, ok := strings.CutPrefix(t.To, ledger.NodeAccountPrefix); ok {
			if owner, ok := s.led.NodeAccount(node); ok && owner == account {
				return true
			}
		}
	}
	return false
}
