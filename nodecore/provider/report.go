package provider

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/internal/journal"
	"github.com/tokenrouter/tokenrouter/p2p"
)

// The node reports its own claims to the settlement peer (p2p.OpClaims),
// so every call it serves is paid even when the gateway never sends its
// receipt. A claim is written to the claim log (Config.ClaimLog) after the
// call's trailer went to the gateway, off the call's path, and stays there
// until settlement acknowledges it; a restarted node resends what is left.

// claimReportBatch bounds one OpClaims call (settlement takes 500).
const claimReportBatch = 500

// maxQueuedClaims bounds the claims kept in memory while settlement cannot
// be reached (~500 bytes each); older ones stay only in the claim log and
// are sent after the node restarts.
const maxQueuedClaims = 200_000

// claimReportLinger is how long a claim waits for others to share its
// write to the claim log and its call to settlement. Claims are the
// fallback for receipts, which settle calls within ~50 ms; they have the
// claim grace (2 minutes) to arrive, so they are gathered for a second:
// one write, one fsync and one call a second, whatever the rate.
const claimReportLinger = time.Second

// claimReporter delivers the node's claims to the settlement peer.
type claimReporter struct {
	h        *p2p.Host
	platform peer.ID
	log      *slog.Logger
	j        *journal.Journal // nil: reports are kept in memory only

	mu    sync.Mutex
	fresh []*p2p.Receipt // submitted, not yet in the claim log
	queue []*p2p.Receipt // in the claim log, not yet acknowledged
	wake  chan struct{}
}

func newClaimReporter(h *p2p.Host, platform peer.ID, log *slog.Logger, j *journal.Journal) *claimReporter {
	return &claimReporter{h: h, platform: platform, log: log, j: j, wake: make(chan struct{}, 1)}
}

// submit queues a claim report: no I/O on the call's path. A node that
// crashes before the next flush loses the claims of its last second, whose
// receipts still bill them.
func (r *claimReporter) submit(rc *p2p.Receipt) {
	r.mu.Lock()
	r.fresh = append(r.fresh, rc)
	full := len(r.fresh) >= claimReportBatch
	r.mu.Unlock()
	if full {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// run sends queued claims until ctx ends, starting with what a previous
// run left in the log.
func (r *claimReporter) run(ctx context.Context) {
	if r.j != nil {
		if left, err := r.j.Pending(); err != nil {
			r.log.Error("claim log unreadable", "err", err)
		} else if len(left) > 0 {
			r.log.Info("resending claims from the claim log", "claims", len(left))
			r.mu.Lock()
			r.queue = append(left, r.queue...)
			r.mu.Unlock()
		}
	}
	backoff := time.Second
	t := time.NewTicker(claimReportLinger)
	defer t.Stop()
	for {
		stopping := false
		select {
		case <-ctx.Done():
			stopping = true
		case <-t.C:
		case <-r.wake:
		}
		r.writeLog()
		if stopping {
			// One last try, briefly: what it cannot send stays in the claim
			// log for the next run.
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			r.flush(sctx)
			cancel()
			return
		}
		if err := r.flush(ctx); err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
	}
}

// writeLog writes the claims submitted since the last call to the claim log,
// in one write, and queues them for sending.
func (r *claimReporter) writeLog() {
	r.mu.Lock()
	fresh := r.fresh
	r.fresh = nil
	r.mu.Unlock()
	if err := r.j.PutBatch(fresh); err != nil {
		r.log.Error("claim log write failed; the claims are only in memory until settled", "claims", len(fresh), "err", err)
	}
	r.mu.Lock()
	r.queue = append(r.queue, fresh...)
	if over := len(r.queue) - maxQueuedClaims; over > 0 {
		r.log.Warn("settlement unreachable for long: the oldest claims wait in the claim log until the node restarts", "claims", over)
		r.queue = append(r.queue[:0:0], r.queue[over:]...)
	}
	r.mu.Unlock()
}

// flush sends the queue in batches until it is empty or a batch fails.
func (r *claimReporter) flush(ctx context.Context) error {
	for {
		r.mu.Lock()
		n := min(len(r.queue), claimReportBatch)
		batch := r.queue[:n:n]
		r.mu.Unlock()
		if n == 0 {
			return nil
		}
		if err := r.send(ctx, batch); err != nil {
			r.log.Debug("claims not delivered; retrying", "claims", n, "err", err)
			return err
		}
		r.mu.Lock()
		r.queue = r.queue[n:]
		r.mu.Unlock()
	}
}

// send delivers one batch; it returns an error when the batch must be sent
// again (settlement unreachable, or it asked for a retry).
func (r *claimReporter) send(ctx context.Context, batch []*p2p.Receipt) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	refs := make([]int, len(batch))
	for i := range refs {
		refs[i] = -1 // no claim batch signature: each carries its MAC
	}
	bin, err := (&p2p.ReceiptBatch{Receipts: batch, Refs: refs}).MarshalBinary()
	if err != nil {
		return err
	}
	resp, err := r.h.CallSettle(cctx, r.platform, &p2p.SettleRequest{Op: p2p.OpClaims, ClaimBatch: bin})
	if err != nil {
		return err
	}
	var done []string
	for i, rc := range batch {
		if i >= len(resp.Results) {
			break
		}
		res := resp.Results[i]
		switch {
		case res.Error == nil:
			done = append(done, rc.RequestID)
		case res.Error.Code == p2p.CodeInvalid:
			r.log.Warn("settlement refused a claim of this node", "request", rc.RequestID, "err", res.Error.Message)
			if r.j != nil {
				r.j.Refused(rc, res.Error.Message)
			}
		default:
			return res.Error // kept: the whole batch goes again, settlement takes replays
		}
	}
	if r.j != nil && len(done) > 0 {
		if err := r.j.Done(done...); err != nil {
			r.log.Error("claim log update failed", "err", err)
		}
	}
	if len(resp.Results) < len(batch) {
		return errShortAnswer
	}
	return nil
}

// errShortAnswer is a settlement answer with fewer results than claims.
var errShortAnswer = &p2p.RPCError{Code: p2p.CodeInternal, Message: "fewer results than claims"}
