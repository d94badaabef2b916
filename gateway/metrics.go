package gateway

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tokenrouter/tokenrouter/gateway/route"
)

// What an operator watches on a gateway's GET /metrics (docs/metrics.md).
// Each gateway has its own registry: several may live in one process.

type metrics struct {
	requests         *prometheus.CounterVec
	duration         *prometheus.HistogramVec
	ttft             *prometheus.HistogramVec
	inFlight         prometheus.Gauge
	upstreamFailures prometheus.Counter
	routing          *prometheus.CounterVec
	attempts         *prometheus.CounterVec
	tokens           *prometheus.CounterVec
	chargedUcr       prometheus.Counter
	receipts         *prometheus.CounterVec
	receiptsPending  prometheus.Gauge
	streams          *prometheus.CounterVec
	creditTopUps     *prometheus.CounterVec
}

// latencyBuckets span a cached answer (1 ms) to a long generation (~33 s);
// longer calls land in +Inf.
var latencyBuckets = prometheus.ExponentialBuckets(0.001, 2, 16)

func newMetrics(reg *prometheus.Registry) metrics {
	m := metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenrouter_gateway_requests_total", Help: "Inference requests by endpoint and status.",
		}, []string{"endpoint", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tokenrouter_gateway_request_seconds", Help: "Inference request duration (whole stream for streamed calls).",
			Buckets: latencyBuckets,
		}, []string{"endpoint"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tokenrouter_gateway_ttft_seconds", Help: "Time to first token: from the request's arrival until the first chunk of a stream, or a whole answer, was sent to the client.",
			Buckets: latencyBuckets,
		}, []string{"endpoint", "stream"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenrouter_gateway_in_flight", Help: "Inference requests being served now.",
		}),
		upstreamFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenrouter_gateway_upstream_failures_total", Help: "Node attempts that failed (5xx, broken streams, unreachable).",
		}),
		routing: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenrouter_gateway_routing_decisions_total",
			Help: "Routing decisions: chosen (least_loaded, after_failure, after_full), no_candidate (model_not_found, full, breaker_open, unreachable, below_floor, all_tried, ...) and gave_up (retries_exhausted, full_tries_exhausted, deadline).",
		}, []string{"decision", "reason"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenrouter_gateway_attempts_total", Help: "Attempts on a node by how they ended for the breaker: success, failure, neutral (the consumer's 4xx, or the client left), full (the node's 429).",
		}, []string{"outcome"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenrouter_gateway_billed_tokens_total", Help: "Tokens billed to consumers, by kind.",
		}, []string{"kind"}),
		chargedUcr: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenrouter_gateway_charged_ucr_total", Help: "Micro-credits charged on receipts this gateway signed.",
		}),
		receipts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenrouter_gateway_receipts_total", Help: "Receipt deliveries by outcome (applied, duplicate, rejected, retry; unjournaled: the journal could not keep it).",
		}, []string{"outcome"}),
		receiptsPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenrouter_gateway_receipts_pending", Help: "Receipts waiting for the settlement peer.",
		}),
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenrouter_gateway_node_streams_total", Help: "Streams to nodes a call ran on: opened for it, or reused from an earlier call.",
		}, []string{"kind"}),
		creditTopUps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenrouter_gateway_credit_topups_total", Help: "Credit-line holds taken or topped up at the settlement peer, by result (ok, insufficient, unknown_key, closed, offline).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.requests, m.duration, m.ttft, m.inFlight, m.upstreamFailures, m.routing, m.attempts,
		m.tokens, m.chargedUcr, m.receipts, m.receiptsPending, m.streams, m.creditTopUps,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// Routing decisions (tokenrouter_gateway_routing_decisions_total).
const (
	decisionChosen      = "chosen"
	decisionNoCandidate = "no_candidate"
	decisionGaveUp      = "gave_up"
)

func (m metrics) routed(decision, reason string) {
	m.routing.WithLabelValues(decision, reason).Inc()
}

// chosenReason says why an attempt is made: the first one goes to the
// least-loaded instance; later ones follow a failure or a full node.
func chosenReason(last *attemptError) string {
	switch {
	case last == nil:
		return "least_loaded"
	case last.full:
		return "after_full"
	}
	return "after_failure"
}

// watchMetrics registers what is read at scrape time: the routing
// tables' breaker states, the open credit lines and the host's gossip and
// peers. Called once from New.
func (g *Gateway) watchMetrics() {
	g.credit.topUps = g.metrics.creditTopUps
	g.reg.MustRegister(&viewCollector{v: g.view}, &creditCollector{cl: g.credit}, g.cfg.Host.Collector("gateway"))
}

// Metrics is the gateway's registry, served at GET /metrics (and on a
// --metrics listener of its own when one is asked for).
func (g *Gateway) Metrics() prometheus.Gatherer { return g.reg }

// Census counts the instances of every routing table at now.
func (v *View) Census() route.Census {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.now()
	var c route.Census
	for _, t := range v.tables {
		c.Add(t.Census(now))
	}
	return c
}

// NoPick says why Acquire just found no instance of model
// (route.Census.NoPick).
func (v *View) NoPick(model string) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	t := v.tables[model]
	if t == nil {
		return route.NoPickNoInstance
	}
	return t.Census(v.now()).NoPick()
}

// viewCollector reads the routing tables' breaker and floor states at
// scrape time, under the view's lock.
type viewCollector struct{ v *View }

var (
	breakerDesc = prometheus.NewDesc("tokenrouter_gateway_breaker_instances",
		"Instances by breaker state: closed, open (parked), half-open (probe due or in flight).", []string{"state"}, nil)
	stateDesc = prometheus.NewDesc("tokenrouter_gateway_instances",
		"Instances in the routing tables by state: closed, parked, half-open, probing, below-floor.", []string{"state"}, nil)
	candidatesDesc = prometheus.NewDesc("tokenrouter_gateway_candidates",
		"Instances a call could be routed to now.", nil, nil)
)

func (c *viewCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- breakerDesc
	ch <- stateDesc
	ch <- candidatesDesc
}

func (c *viewCollector) Collect(ch chan<- prometheus.Metric) {
	cs := c.v.Census()
	closed, open, half := cs.Breakers()
	ch <- prometheus.MustNewConstMetric(breakerDesc, prometheus.GaugeValue, float64(closed), "closed")
	ch <- prometheus.MustNewConstMetric(breakerDesc, prometheus.GaugeValue, float64(open), "open")
	ch <- prometheus.MustNewConstMetric(breakerDesc, prometheus.GaugeValue, float64(half), "half-open")
	for s, n := range cs.States {
		ch <- prometheus.MustNewConstMetric(stateDesc, prometheus.GaugeValue, float64(n), route.State(s).String())
	}
	ch <- prometheus.MustNewConstMetric(candidatesDesc, prometheus.GaugeValue, float64(cs.Candidates))
}

// creditCollector reads the open credit lines at scrape time.
type creditCollector struct{ cl *creditLines }

var (
	holdsDesc = prometheus.NewDesc("tokenrouter_gateway_credit_holds",
		"Credit-line holds this gateway has open at the settlement peer (one per account it serves).", nil, nil)
	holdsLeftDesc = prometheus.NewDesc("tokenrouter_gateway_credit_remaining_ucr",
		"Micro-credits left to spend on the open credit lines.", nil, nil)
)

func (c *creditCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- holdsDesc
	ch <- holdsLeftDesc
}

func (c *creditCollector) Collect(ch chan<- prometheus.Metric) {
	n, left := c.cl.open(time.Now())
	ch <- prometheus.MustNewConstMetric(holdsDesc, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(holdsLeftDesc, prometheus.GaugeValue, float64(left))
}
