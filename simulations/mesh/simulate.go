package mesh

import (
	"context"
	"log/slog"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/marcopolo/simnet"
)

// outcome is what one run measured.
type outcome struct {
	metrics   map[string]float64
	published int64 // load changes published in the window
}

// simulate runs spec on virtual time (inside a synctest bubble): build the
// network, let hosts join over join_over and settle until warmup ends,
// measure announcements and bytes over the window, then kill nodes and
// watch the gateways' views until drain ends. elapsed gets the virtual
// time passed, for a progress bar outside the bubble.
func simulate(ctx context.Context, spec *Spec, seed uint64, log *slog.Logger, elapsed *atomic.Int64) (*outcome, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := newWorld(ctx, spec, seed, log)
	if err != nil {
		return nil, err
	}
	defer w.close()
	go tick(ctx, w.start, elapsed, log)
	p := w.draw()
	w.startHosts(p)
	log.Info("mesh: hosts started", "hosts", spec.Hosts, "gateways", spec.Gateways, "bootstraps", spec.Bootstraps,
		"every", spec.Every(), "topics", len(w.topics))

	sleep(ctx, time.Until(w.start.Add(spec.Warmup.D())))
	before := w.sample()
	w.rec.setMeasuring(true)
	sleep(ctx, spec.Window.D())
	w.rec.setMeasuring(false)
	after := w.sample()
	log.Info("mesh: window measured", "virtual", time.Since(w.start))

	killFrom := time.Now()
	w.killAll(ctx, p.victims)
	sleep(ctx, time.Until(killFrom.Add(spec.Drain.D())))
	log.Info("mesh: drained", "virtual", time.Since(w.start))
	return w.outcome(before, after, time.Now()), nil
}

// tick publishes the virtual time passed, once a virtual second, and logs
// it every ten.
func tick(ctx context.Context, start time.Time, elapsed *atomic.Int64, log *slog.Logger) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			d := now.Sub(start)
			elapsed.Store(int64(d))
			if d%(10*time.Second) == 0 {
				log.Info("mesh: virtual time", "at", d, "goroutines", runtime.NumGoroutine())
			}
		}
	}
}

// sample is every host's counters at one moment.
type sample struct {
	at     time.Time
	bytes  []traffic
	gossip []gossipCounts
	wire   []simnet.ConnStats
	conns  []int
}

func (w *world) sample() sample {
	s := sample{at: time.Now()}
	for _, sh := range w.hosts {
		s.bytes = append(s.bytes, sh.bytes.snapshot())
		s.gossip = append(s.gossip, sh.gossip.count.snapshot())
		var ws simnet.ConnStats
		if c := sh.conn.Load(); c != nil {
			ws = c.Stats()
		}
		s.wire = append(s.wire, ws)
		s.conns = append(s.conns, len(sh.h.Network().Peers()))
	}
	return s
}
