package bootstrap

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// Metrics returns the registry a bootstrap peer on h serves on its
// --metrics listener (docs/metrics.md): connected peers, the DHT routing
// table, live members, gossip messages it relayed by verdict, relay
// reservations and circuits, and the Go and process collectors. Every
// value is read from h at scrape time; each call returns a registry of
// its own.
func Metrics(h *p2p.Host) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(h.Collector("bootstrap"),
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return reg
}
