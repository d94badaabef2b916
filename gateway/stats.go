package gateway

import (
	"strconv"
)

// Stats is a snapshot of what a gateway is doing, for `tokenrouter
// status`: the instances it can route to per model and the calls it
// answered. The counts are its /metrics counters since it started.
type Stats struct {
	Peer     string       `json:"peer_id"`
	Platform string       `json:"platform"` // the settlement peer it trusts
	Models   []ModelStats `json:"models"`
	Calls    CallStats    `json:"calls"`
	InFlight int          `json:"in_flight"` // this gateway's calls on nodes now
	// Tokens and credits billed on the receipts it signed.
	PromptTokens     int64 `json:"billed_prompt_tokens"`
	CompletionTokens int64 `json:"billed_completion_tokens"`
	ChargedUcr       int64 `json:"charged_ucr"`
	// ReceiptsPending wait for the settlement peer; Receipts counts
	// deliveries by outcome (applied, duplicate, rejected, retry, ...).
	ReceiptsPending int64            `json:"receipts_pending"`
	Receipts        map[string]int64 `json:"receipts"`
}

// ModelStats is one model the gateway knows a live instance of.
type ModelStats struct {
	Model      string `json:"model"`
	Instances  int    `json:"instances"`  // live instances it knows of
	Routable   int    `json:"routable"`   // of which a call may be routed to now or shortly (what /v1/models lists)
	Candidates int    `json:"candidates"` // of which a call is routed to now (not full, parked, away or under the floor)
	InFlight   int    `json:"in_flight"`  // this gateway's calls on them
}

// CallStats counts the inference calls answered, by status class.
type CallStats struct {
	Total       int64            `json:"total"`
	OK          int64            `json:"ok"`            // 2xx
	ClientError int64            `json:"client_errors"` // 4xx: bad key, bad request, no credit, unknown model, rate limited
	Failed      int64            `json:"failed"`        // 5xx: no capacity, every node tried failed
	ByStatus    map[string]int64 `json:"by_status"`
}

// Stats returns a snapshot of the gateway's routing view and counters.
func (g *Gateway) Stats() Stats {
	st := Stats{
		Peer:     g.cfg.Host.IDString(),
		Platform: g.cfg.Platform.String(),
		Models:   []ModelStats{},
		Calls:    CallStats{ByStatus: map[string]int64{}},
		Receipts: map[string]int64{},
	}
	for _, m := range g.view.Models() {
		ms := ModelStats{Model: m.ID, Instances: len(m.Instances)}
		for _, in := range m.Instances {
			if in.Routable {
				ms.Routable++
			}
			if in.Candidate {
				ms.Candidates++
			}
			ms.InFlight += in.Local
		}
		st.InFlight += ms.InFlight
		st.Models = append(st.Models, ms)
	}
	mfs, err := g.reg.Gather()
	if err != nil {
		return st
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			v := int64(m.GetCounter().GetValue() + m.GetGauge().GetValue())
			switch mf.GetName() {
			case "tokenrouter_gateway_requests_total":
				st.Calls.add(labels["code"], v)
			case "tokenrouter_gateway_billed_tokens_total":
				switch labels["kind"] {
				case "prompt":
					st.PromptTokens += v
				case "completion":
					st.CompletionTokens += v
				}
			case "tokenrouter_gateway_charged_ucr_total":
				st.ChargedUcr += v
			case "tokenrouter_gateway_receipts_pending":
				st.ReceiptsPending = v
			case "tokenrouter_gateway_receipts_total":
				st.Receipts[labels["outcome"]] += v
			}
		}
	}
	return st
}

func (c *CallStats) add(code string, n int64) {
	c.Total += n
	c.ByStatus[code] += n
	status, _ := strconv.Atoi(code)
	switch {
	case status >= 200 && status < 300:
		c.OK += n
	case status >= 400 && status < 500:
		c.ClientError += n
	case status >= 500:
		c.Failed += n
	}
}
