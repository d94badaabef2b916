package launch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// serveMetrics serves reg's GET /metrics (and nothing else) on c.Metrics,
// a listener of its own: node and bootstrap have no HTTP server, and a
// gateway or settlement peer may want its metrics off its public port. It
// writes the bound address to <data>/metrics-addr. The returned stop ends
// it and removes the file. Without --metrics it does nothing.
func (c Common) serveMetrics(reg prometheus.Gatherer) (stop func(), err error) {
	if c.Metrics == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", c.Metrics)
	if err != nil {
		return nil, fmt.Errorf("--metrics: listen %s: %w", c.Metrics, err)
	}
	srv := &http.Server{Handler: metricsHandler(reg), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.logger().Error("metrics listener stopped", "err", err)
		}
	}()
	file := filepath.Join(c.Data, p2p.MetricsAddrFile)
	if err := p2p.WriteFileAtomic(file, []byte(ln.Addr().String()+"\n"), 0o644); err != nil {
		srv.Close()
		<-done
		return nil, fmt.Errorf("write %s: %w", file, err)
	}
	c.logger().Info("metrics up", "addr", ln.Addr().String())
	return func() {
		os.Remove(file)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	}, nil
}

// metricsHandler answers GET /metrics with reg in Prometheus's text format,
// and anything else with 404.
func metricsHandler(reg prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}
