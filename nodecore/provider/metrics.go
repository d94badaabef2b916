package provider

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// What an operator scrapes from a node (`tokenrouter node --metrics
// HOST:PORT`, docs/metrics.md): calls served by model and result, tokens,
// time to first token and call latency, calls in flight, announcements
// published, and the host's gossip and peers. Each node has its own
// registry: dev and tests run many nodes in one process.

type metrics struct {
	calls         *prometheus.CounterVec
	tokens        *prometheus.CounterVec
	ttft          *prometheus.HistogramVec
	duration      *prometheus.HistogramVec
	announcements *prometheus.CounterVec
}

// callBuckets span an answer from a cache (1 ms) to a long generation (~33 s).
var callBuckets = prometheus.ExponentialBuckets(0.001, 2, 16)

// initMetrics creates the node's registry and metrics; New calls it once.
func (n *Node) initMetrics() {
	m := metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenrouter_node_calls_total",
			Help: "Calls by model and result: served (answered in full), failed (the node's fault, or an answer the engine broke off), full (node_full), rejected (the consumer's bad request), dropped (the gateway left or the stream broke).",
		}, []string{"model", "result"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenrouter_node_tokens_total",
			Help: "Tokens the node claimed for the calls it served, by model and kind (prompt, completion).",
		}, []string{"model", "kind"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenrouter_node_ttft_seconds",
			Help:    "Time to first token: from the gateway's request until the node sent the first chunk of a stream, or a whole answer.",
			Buckets: callBuckets,
		}, []string{"model"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenrouter_node_call_seconds",
			Help:    "Duration of the calls the node answered with a claim, from request to trailer.",
			Buckets: callBuckets,
		}, []string{"model"}),
		announcements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenrouter_node_announcements_total",
			Help: "Load announcements the node published on gossip, by result (published, failed).",
		}, []string{"result"}),
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.calls, m.tokens, m.ttft, m.duration, m.announcements, &loadCollector{n: n},
		n.cfg.Host.Collector("node"),
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	n.reg, n.metrics = reg, m
}

// Metrics is the node's registry, served on its --metrics listener.
func (n *Node) Metrics() prometheus.Gatherer { return n.reg }

// callResult names how a call ended, in the classes of Stats (callStats.ended).
func callResult(done bool, o callOutcome) string {
	switch {
	case done && o.claim.Incomplete:
		return "failed" // the engine broke off: billed for what it relayed, yet a failure
	case done:
		return "served"
	case o.status == http.StatusTooManyRequests:
		return "full"
	case o.nodeFault:
		return "failed"
	case o.status >= 400 && o.status < 500:
		return "rejected"
	}
	return "dropped"
}

// ended counts one call serve handled (its deferred hook, beside Stats').
// A model this node does not serve is labelled "other", so gateways cannot
// grow the label set.
func (m metrics) ended(n *Node, c *call) {
	model := engine.CanonicalModel(c.req.Model)
	n.mu.Lock()
	if n.instances[model] == nil {
		model = "other"
	}
	n.mu.Unlock()
	m.calls.WithLabelValues(model, callResult(c.done, c.outcome)).Inc()
	if !c.firstData.IsZero() {
		m.ttft.WithLabelValues(model).Observe(c.firstData.Sub(c.start).Seconds())
	}
	if c.done {
		m.duration.WithLabelValues(model).Observe(time.Since(c.start).Seconds())
		m.tokens.WithLabelValues(model, "prompt").Add(float64(c.outcome.claim.PromptTokens))
		m.tokens.WithLabelValues(model, "completion").Add(float64(c.outcome.claim.CompletionTokens))
	}
}

// wrote notes a frame the call wrote: the first chunk of an answer is its
// time to first token. c.mu is held.
func (c *call) wrote(typ byte) {
	if c.firstData.IsZero() && c.outcome.status == http.StatusOK && (typ == p2p.FrameData || typ == p2p.FrameUsage) {
		c.firstData = time.Now()
	}
}

// announced counts one announcement.
func (m metrics) announced(err error) {
	result := "published"
	if err != nil {
		result = "failed"
	}
	m.announcements.WithLabelValues(result).Inc()
}

// loadCollector reads the node's load at scrape time, under its lock.
type loadCollector struct{ n *Node }

var (
	inFlightDesc = prometheus.NewDesc("tokenrouter_node_in_flight",
		"Calls in flight, by model.", []string{"model"}, nil)
	capacityDesc = prometheus.NewDesc("tokenrouter_node_capacity",
		"Concurrent calls the node takes, by model.", []string{"model"}, nil)
	tokPerSDesc = prometheus.NewDesc("tokenrouter_node_measured_tok_per_second",
		"The node's measured generation rate per call (what it announces).", nil, nil)
)

func (c *loadCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- inFlightDesc
	ch <- capacityDesc
	ch <- tokPerSDesc
}

func (c *loadCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	n.mu.Lock()
	out := make([]prometheus.Metric, 0, 2*len(n.models)+1)
	for _, m := range n.models {
		in := n.instances[m]
		out = append(out,
			prometheus.MustNewConstMetric(inFlightDesc, prometheus.GaugeValue, float64(in.inFlight), m),
			prometheus.MustNewConstMetric(capacityDesc, prometheus.GaugeValue, float64(in.capacity), m))
	}
	out = append(out, prometheus.MustNewConstMetric(tokPerSDesc, prometheus.GaugeValue, n.tokPerS))
	n.mu.Unlock()
	for _, m := range out {
		ch <- m
	}
}
