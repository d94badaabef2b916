package gateway

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// receiptBatch is how many receipts go in one call to the settlement peer.
const receiptBatch = 1000

// settler delivers receipts to the settlement peer in batches, retrying
// with backoff until each is resolved: applied, a duplicate of one applied,
// or refused on its merits. Every receipt is in the durable journal from
// the moment it is signed until it is resolved, so a restart or a
// settlement outage loses nothing.
type settler struct {
	h        *p2p.Host
	platform peer.ID
	log      *slog.Logger
	metrics  metrics
	journal  *Journal

	mu      sync.Mutex
	slow    map[string]time.Time // nodes that failed to sign a claim batch lately: skipped until then
	queue   []*p2p.Receipt
	sending int // receipts taken from the queue and not yet resolved
	wake    chan struct{}
}

func newSettler(h *p2p.Host, platform peer.ID, log *slog.Logger, m metrics, j *Journal) *settler {
	return &settler{h: h, platform: platform, log: log, metrics: m, journal: j, wake: make(chan struct{}, 1)}
}

// resume queues the receipts a previous run left in the journal.
func (s *settler) resume() error {
	pending, err := s.journal.Pending()
	if err != nil {
		return err
	}
	if len(pending) > 0 {
		s.log.Info("resending receipts from the journal", "receipts", len(pending))
	}
	s.mu.Lock()
	s.queue = append(s.queue, pending...)
	s.mu.Unlock()
	return nil
}

// submit journals a signed receipt and queues it for delivery.
func (s *settler) submit(r *p2p.Receipt) {
	if err := s.journal.Put(r); err != nil {
		// Still deliver it; the operator must know the journal failed.
		s.log.Error("receipt journal write failed", "request", r.RequestID, "err", err)
	}
	s.mu.Lock()
	s.queue = append(s.queue, r)
	s.metrics.receiptsPending.Set(float64(len(s.queue) + s.sending))
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run delivers queued receipts until ctx ends.
func (s *settler) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for {
		s.mu.Lock()
		n := min(len(s.queue), receiptBatch)
		batch := s.queue[:n:n]
		s.queue = s.queue[n:]
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
		retry := s.deliver(ctx, batch)
		s.mu.Lock()
		s.queue = append(retry, s.queue...)
		s.sending = 0
		s.metrics.receiptsPending.Set(float64(len(s.queue)))
		s.mu.Unlock()
		if len(retry) == 0 {
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

// deliver sends one batch and returns the receipts to retry.
func (s *settler) deliver(ctx context.Context, batch []*p2p.Receipt) []*p2p.Receipt {
	rb, err := s.sign(ctx, batch)
	if err != nil {
		s.log.Error("cannot sign a receipt batch", "err", err)
		return batch
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := s.h.SendReceipts(cctx, s.platform, rb)
	if err != nil || len(resp.Results) != len(batch) {
		s.metrics.receipts.WithLabelValues("retry").Add(float64(len(batch)))
		s.log.Warn("receipts not delivered; will retry", "receipts", len(batch), "err", err)
		return batch
	}
	var retry []*p2p.Receipt
	for i, res := range resp.Results {
		r := batch[i]
		switch {
		case res.Error == nil:
			outcome := "applied"
			if !res.Applied {
				outcome = "duplicate"
			}
			s.metrics.receipts.WithLabelValues(outcome).Inc()
			if err := s.journal.Done(r.RequestID); err != nil {
				s.log.Error("receipt journal delete failed", "request", r.RequestID, "err", err)
			}
		case res.Error.Code == p2p.CodeInternal:
			s.metrics.receipts.WithLabelValues("retry").Inc()
			retry = append(retry, r)
		default:
			// Refused on its merits: resending cannot help.
			s.metrics.receipts.WithLabelValues("rejected").Inc()
			s.log.Error("settlement refused a receipt", "request", r.RequestID, "err", res.Error)
			if err := s.journal.Refused(r, res.Error.Error()); err != nil {
				s.log.Error("receipt journal write failed", "request", r.RequestID, "err", err)
			}
		}
	}
	return retry
}

// sign puts receipts under batch signatures: each serving node signs its
// claims in one ClaimBatch, and the gateway signs the whole. A node that
// cannot be reached (or has forgotten the claims) leaves its receipts on
// their own node signatures, which settlement then checks one by one.
func (s *settler) sign(ctx context.Context, batch []*p2p.Receipt) (*p2p.ReceiptBatch, error) {
	rb := &p2p.ReceiptBatch{Gateway: s.h.ID().String(), Receipts: batch, Refs: make([]int, len(batch))}
	byNode := map[string][]int{}
	for i, r := range batch {
		rb.Refs[i] = -1
		byNode[r.Node] = append(byNode[r.Node], i)
	}
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	sem := make(chan struct{}, 8)
	now := time.Now()
	for node, idx := range byNode {
		id, err := peer.Decode(node)
		s.mu.Lock()
		skip := now.Before(s.slow[node])
		s.mu.Unlock()
		if err != nil || skip {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			hashes := make([][32]byte, len(idx))
			for j, i := range idx {
				hashes[j] = batch[i].Claim.Hash()
			}
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			cb, err := s.h.RequestClaimBatch(cctx, id, hashes)
			cancel()
			if err != nil {
				// Its receipts go on their own signatures; do not wait on it again soon.
				s.log.Debug("node did not sign a claim batch; receipts keep their own signatures", "node", node, "err", err)
				s.mu.Lock()
				if s.slow == nil || len(s.slow) > 10_000 {
					s.slow = map[string]time.Time{}
				}
				s.slow[node] = time.Now().Add(5 * time.Minute)
				s.mu.Unlock()
				return
			}
			mu.Lock()
			defer mu.Unlock()
			rb.Claims = append(rb.Claims, cb)
			for _, i := range idx {
				rb.Refs[i] = len(rb.Claims) - 1
			}
		})
	}
	wg.Wait()
	return rb, rb.Sign(s.h.Key)
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
			s.log.Warn("gateway stopping with receipts not yet delivered; they stay in the journal", "receipts", n)
			return
		}
		select {
		case s.wake <- struct{}{}:
		default:
		}
		time.Sleep(20 * time.Millisecond)
	}
}
