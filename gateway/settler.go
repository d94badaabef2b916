package gateway

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/internal/journal"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// receiptBatch is how many receipts go in one call to the settlement peer.
const receiptBatch = 1000

// receiptLinger is how long a receipt waits for others to share its batch.
// Each batch costs a claim-batch signature on every node in it, a gateway
// signature, a settlement round trip and a ledger fsync, whatever its size:
// under load, receipts sent as they come went in batches of a few, and the
// batches cost more than the calls. 50 ms keeps a call settled well within
// SPEC §6's 2 s.
const receiptLinger = 50 * time.Millisecond

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
	journal  *journal.Journal

	mu       sync.Mutex
	slow     map[string]time.Time // nodes that failed to sign a claim batch lately: skipped until then
	queue    []*p2p.Receipt
	since    time.Time // when the queue last stopped being empty
	draining bool      // flush is waiting: send at once
	sending  int       // receipts taken from the queue and not yet resolved
	wake     chan struct{}
}

func newSettler(h *p2p.Host, platform peer.ID, log *slog.Logger, m metrics, j *journal.Journal) *settler {
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
		// Still deliver it; the operator must know the journal failed: a
		// crash now would lose this bill.
		s.metrics.receipts.WithLabelValues("unjournaled").Inc()
		s.log.Error("receipt journal write failed; the receipt is only in memory until settled", "request", r.RequestID, "err", err)
	}
	s.mu.Lock()
	if len(s.queue) == 0 {
		s.since = time.Now()
	}
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
	linger := time.NewTimer(0)
	defer linger.Stop()
	for {
		s.mu.Lock()
		if n := len(s.queue); n > 0 && n < receiptBatch && !s.draining {
			if wait := time.Until(s.since.Add(receiptLinger)); wait > 0 {
				s.mu.Unlock()
				linger.Reset(wait)
				select {
				case <-ctx.Done():
					return
				case <-linger.C:
				case <-s.wake: // more receipts, or a flush
				}
				continue
			}
		}
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
		if len(s.queue) == 0 || len(retry) > 0 {
			s.since = time.Now()
		}
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
	done := make([]string, 0, len(batch))
	for i, res := range resp.Results {
		r := batch[i]
		switch {
		case res.Error == nil:
			outcome := "applied"
			if !res.Applied {
				outcome = "duplicate"
			}
			s.metrics.receipts.WithLabelValues(outcome).Inc()
			done = append(done, r.RequestID)
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
	if err := s.journal.Done(done...); err != nil {
		s.log.Error("receipt journal delete failed", "receipts", len(done), "err", err)
	}
	return retry
}

// sign puts receipts under batch signatures: each serving node signs its
// claims in one ClaimBatch, and the gateway signs the whole. A node that
// cannot be reached (or has forgotten the claims) leaves its receipts on
// the MACs of their claims, which settlement then checks one by one.
func (s *settler) sign(ctx context.Context, batch []*p2p.Receipt) (*p2p.ReceiptBatch, error) {
	rb := &p2p.ReceiptBatch{Gateway: s.h.IDString(), Receipts: batch, Refs: make([]int, len(batch))}
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
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
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
