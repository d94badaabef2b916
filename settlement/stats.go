package settlement

import (
	"encoding/hex"
	"sort"
	"time"
)

// Stats is a snapshot of what a settlement peer is doing, for
// `tokenrouter status`: the books (accounts, the ledger's head) and the
// receipts and claims it took since it started (its /metrics counters).
type Stats struct {
	Peer string `json:"peer_id"`
	// Accounts in the ledger, the system accounts (mint, platform, bounty
	// pool, nodes not yet linked) included; AccountsCreated since start.
	Accounts        int              `json:"accounts"`
	AccountsCreated int64            `json:"accounts_created"`
	Receipts        map[string]int64 `json:"receipts"` // by outcome: applied, duplicate, rejected, failed
	Claims          map[string]int64 `json:"claims"`   // nodes' own claims by outcome
	ChargedUcr      int64            `json:"charged_ucr"`
	Ledger          LedgerHead       `json:"ledger"`
	// Models are the instances announced live now, per model.
	Models []ModelStats `json:"models"`
}

// ModelStats is the live supply of one model, from announcements.
type ModelStats struct {
	Model     string `json:"model"`
	Instances int    `json:"instances"`
	Capacity  int    `json:"capacity"`
	InFlight  int    `json:"in_flight"`
}

// LedgerHead is the newest link of the ledger's signed hash chain.
type LedgerHead struct {
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"` // hex; "" before the first link
	Time time.Time `json:"time,omitzero"`
}

// Stats returns a snapshot of the settlement peer's books and counters.
func (s *Settlement) Stats() Stats {
	st := Stats{
		Peer:     s.cfg.Host.IDString(),
		Receipts: map[string]int64{},
		Claims:   map[string]int64{},
		Models:   []ModelStats{},
	}
	if b, err := s.led.Balances(); err == nil { // a copy of every balance: fine for a question an operator asks

		st.Accounts = len(b)
	}
	if h := s.led.Head(); h.Seq > 0 {
		st.Ledger = LedgerHead{Seq: h.Seq, Hash: hex.EncodeToString(h.Hash[:]), Time: time.Unix(0, h.Time).UTC()}
	}
	for _, m := range s.rep.Supply(time.Now()) {
		st.Models = append(st.Models, ModelStats{Model: m.Model, Instances: m.Instances, Capacity: m.Capacity, InFlight: m.InFlight})
	}
	sort.Slice(st.Models, func(i, j int) bool { return st.Models[i].Model < st.Models[j].Model })
	mfs, err := s.reg.Gather()
	if err != nil {
		return st
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var label string
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" {
					label = l.GetValue()
				}
			}
			v := int64(m.GetCounter().GetValue())
			switch mf.GetName() {
			case "tokenrouter_settle_receipts_total":
				st.Receipts[label] += v
			case "tokenrouter_settle_node_claims_total":
				st.Claims[label] += v
			case "tokenrouter_settle_charged_ucr_total":
				st.ChargedUcr += v
			case "tokenrouter_settle_accounts_created_total":
				st.AccountsCreated += v
			}
		}
	}
	return st
}
