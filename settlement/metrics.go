package settlement

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// What an operator watches on the settlement peer's GET /metrics
// (docs/metrics.md). Each peer has its own registry.

type metrics struct {
	receipts      *prometheus.CounterVec
	settledUcr    prometheus.Counter
	accounts      prometheus.Counter
	claims        *prometheus.CounterVec
	commits       *prometheus.CounterVec
	commitSeconds *prometheus.HistogramVec
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
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenrouter_settle_ledger_commits_total",
			Help: "Ledger writes (each one synced batch), by operation (receipts, receipt_capped, hold, hold_topup, hold_release, hold_expire) and result (ok; refused: the ledger declined it, e.g. insufficient funds; error: the write failed).",
		}, []string{"op", "result"}),
		commitSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenrouter_settle_ledger_commit_seconds",
			Help:    "Ledger write latency, fsync included, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16), // 100 µs .. 3.3 s
		}, []string{"op"}),
	}
	reg.MustRegister(m.receipts, m.settledUcr, m.accounts, m.claims, m.commits, m.commitSeconds,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// committed records one ledger write of kind op that started at start.
func (m metrics) committed(op string, start time.Time, err error) {
	result := "ok"
	switch {
	case errors.Is(err, ledger.ErrInsufficientFunds), errors.Is(err, ledger.ErrInvalid),
		errors.Is(err, ledger.ErrUnknownAccount), errors.Is(err, ledger.ErrConflict):
		result = "refused" // the ledger said no; nothing failed
	case err != nil:
		result = "error"
	}
	m.commits.WithLabelValues(op, result).Inc()
	m.commitSeconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// watchMetrics registers what is read at scrape time: the ledger's
// accounts, holds and transfers, and the host's gossip and peers. Called
// once from New.
func (s *Settlement) watchMetrics() {
	s.reg.MustRegister(&ledgerCollector{led: s.led}, s.cfg.Host.Collector("settle"))
}

// Metrics is the peer's registry, served at GET /metrics (and on a
// --metrics listener of its own when one is asked for).
func (s *Settlement) Metrics() prometheus.Gatherer { return s.reg }

// ledgerCollector reads ledger.Stats at scrape time.
type ledgerCollector struct{ led *ledger.Ledger }

var (
	accountsDesc = prometheus.NewDesc("tokenrouter_settle_accounts",
		"Accounts in the ledger, system accounts and nodes' own included.", nil, nil)
	holdsOpenDesc = prometheus.NewDesc("tokenrouter_settle_holds_open",
		"Credit holds open (gateways' credit lines), neither voided nor expired.", nil, nil)
	heldDesc = prometheus.NewDesc("tokenrouter_settle_held_ucr",
		"Micro-credits the open holds still reserve.", nil, nil)
	transfersDesc = prometheus.NewDesc("tokenrouter_settle_ledger_transfers_total",
		"Transfers committed to the ledger since it was created.", nil, nil)
	chainDesc = prometheus.NewDesc("tokenrouter_settle_ledger_chain_links",
		"Links of the ledger's signed hash chain.", nil, nil)
)

func (c *ledgerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{accountsDesc, holdsOpenDesc, heldDesc, transfersDesc, chainDesc} {
		ch <- d
	}
}

func (c *ledgerCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.led.Stats()
	ch <- prometheus.MustNewConstMetric(accountsDesc, prometheus.GaugeValue, float64(st.Accounts))
	ch <- prometheus.MustNewConstMetric(holdsOpenDesc, prometheus.GaugeValue, float64(st.OpenHolds))
	ch <- prometheus.MustNewConstMetric(heldDesc, prometheus.GaugeValue, float64(st.HeldUcr))
	ch <- prometheus.MustNewConstMetric(transfersDesc, prometheus.CounterValue, float64(st.Transfers))
	ch <- prometheus.MustNewConstMetric(chainDesc, prometheus.GaugeValue, float64(st.ChainLinks))
}
