package gateway

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// settler delivers receipts to the settlement peer, retrying with backoff
// until each is acknowledged (applied or a duplicate of one applied).
//
// The queue lives in memory: a gateway that dies loses receipts it had not
// delivered. The durable journal arrives with credit lines (Step 3).
type settler struct {
	h        *p2p.Host
	platform peer.ID
	log      *slog.Logger
	metrics  metrics

	mu      sync.Mutex
	queue   []*p2p.Receipt
	sending int // receipts taken from the queue and not yet resolved
	wake    chan struct{}
}

func newSettler(h *p2p.Host, platform peer.ID, log *slog.Logger, m metrics) *settler {
	return &settler{h: h, platform: platform, log: log, metrics: m, wake: make(chan struct{}, 1)}
}

// submit queues a signed receipt for delivery.
func (s *settler) submit(r *p2p.Receipt) {
	s.mu.Lock()
	s.queue = append(s.queue, r)
	s.metrics.receiptsPending.Set(float64(len(s.queue)))
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run delivers queued receipts in batches of concurrent sends until ctx ends.
func (s *settler) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for {
		s.mu.Lock()
		batch := s.queue
		s.queue = nil
		s.sending = len(batch)
		s.mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
				continue
			}
		}
		failed := s.deliver(ctx, batch)
		s.mu.Lock()
		s.queue = append(failed, s.queue...)
		s.sending = 0
		s.metrics.receiptsPending.Set(float64(len(s.queue)))
		s.mu.Unlock()
		if len(failed) == 0 {
			backoff = 100 * time.Millisecond
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// deliver sends a batch (up to 16 at once) and returns those to retry.
func (s *settler) deliver(ctx context.Context, batch []*p2p.Receipt) []*p2p.Receipt {
	var (
		mu     sync.Mutex
		failed []*p2p.Receipt
		wg     sync.WaitGroup
		sem    = make(chan struct{}, 16)
	)
	for _, r := range batch {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if s.send(ctx, r) {
				return
			}
			mu.Lock()
			failed = append(failed, r)
			mu.Unlock()
		})
	}
	wg.Wait()
	return failed
}

// send delivers one receipt; true when it needs no retry.
func (s *settler) send(ctx context.Context, r *p2p.Receipt) bool {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := s.h.CallSettle(cctx, s.platform, &p2p.SettleRequest{Op: p2p.OpReceipt, Receipt: r})
	var rpcErr *p2p.RPCError
	switch {
	case err == nil:
		outcome := "applied"
		if !resp.Applied {
			outcome = "duplicate"
		}
		s.metrics.receipts.WithLabelValues(outcome).Inc()
		return true
	case errors.As(err, &rpcErr) && rpcErr.Code != p2p.CodeInternal:
		// Settlement refused it on its merits; resending cannot help.
		s.metrics.receipts.WithLabelValues("rejected").Inc()
		s.log.Error("settlement rejected a receipt", "request", r.RequestID, "err", err)
		return true
	default:
		s.metrics.receipts.WithLabelValues("retry").Inc()
		s.log.Warn("receipt not delivered; will retry", "request", r.RequestID, "err", err)
		return false
	}
}

// flush waits up to d for every queued receipt to be resolved.
func (s *settler) flush(d time.Duration) {
	deadline := time.Now().Add(d)
	for {
		s.mu.Lock()
		n := len(s.queue) + s.sending
		s.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			s.log.Error("gateway stopping with receipts not delivered", "receipts", n)
			return
		}
		select {
		case s.wake <- struct{}{}:
		default:
		}
		time.Sleep(20 * time.Millisecond)
	}
}
