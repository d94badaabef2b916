package gateway

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	requests         *prometheus.CounterVec
	duration         *prometheus.HistogramVec
	upstreamFailures prometheus.Counter
	tokens           *prometheus.CounterVec
	chargedUcr       prometheus.Counter
	receipts         *prometheus.CounterVec
	receiptsPending  prometheus.Gauge
	streams          *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry) metrics {
	m := metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenrouter_gateway_requests_total", Help: "Inference requests by endpoint and status.",
		}, []string{"endpoint", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tokenrouter_gateway_request_seconds", Help: "Inference request duration (whole stream for streamed calls).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"endpoint"}),
		upstreamFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenrouter_gateway_upstream_failures_total", Help: "Node attempts that failed (5xx, broken streams, unreachable).",
		}),
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
	}
	reg.MustRegister(m.requests, m.duration, m.upstreamFailures, m.tokens, m.chargedUcr, m.receipts, m.receiptsPending, m.streams,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}
