package settlement

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	receipts   *prometheus.CounterVec
	settledUcr prometheus.Counter
	accounts   prometheus.Counter
	claims     *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry) metrics {
	m := metrics{
		receipts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenrouter_settle_receipts_total",
			Help: "Receipts received, by outcome (applied, duplicate, rejected, failed).",
		}, []string{"outcome"}),
		settledUcr: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenrouter_settle_charged_ucr_total",
			Help: "Micro-credits charged to consumers by applied receipts.",
		}),
		accounts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenrouter_settle_accounts_created_total",
			Help: "Accounts created.",
		}),
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenrouter_settle_node_claims_total",
			Help: "Nodes' own claims, by outcome (pending, matched by a receipt, billed without one, disputed, refused).",
		}, []string{"outcome"}),
	}
	reg.MustRegister(m.receipts, m.settledUcr, m.accounts, m.claims,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}
