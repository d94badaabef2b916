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

// claimReportLinger is how long a claim waits for others to share a call.
const claimReportLinger = 200 * time.Millisecond

// claimReporter delivers the node's claims to the settlement peer.
type claimReporter struct {
	h        *p2p.Host
	platform peer.ID
	log      *slog.Logger
	j        *journal.Journal // nil: reports are kept in memory only

	mu    sync.Mutex
	queue []*p2p.Receipt
	wake  chan struct{}
}

func newClaimReporter(h *p2p.Host, platform peer.ID, log *slog.Logger, j *journal.Journal) *claimReporter {
	return &claimReporter{h: h, platform: platform, log: log, j: j, wake: make(chan struct{}, 1)}
}

// submit logs a claim report and queues it.
func (r *claimReporter) submit(rc *p2p.Receipt) {
	if r.j != nil {
		if err := r.j.Put(rc); err != nil {
			r.log.Error("claim log write failed; the claim is only in memory until settled", "request", rc.RequestID, "err", err)
		}
	}
	r.mu.Lock()
	r.queue = append(r.queue, rc)
	full := len(r.queue) >= claimReportBatch
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
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.wake:
		}
		for {
			r.mu.Lock()
			n := min(len(r.queue), claimReportBatch)
			batch := r.queue[:n:n]
			r.mu.Unlock()
			if n == 0 {
				break
			}
			if err := r.send(ctx, batch); err != nil {
				r.log.Debug("claims not delivered; retrying", "claims", n, "err", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 30*time.Second)
				break
			}
			backoff = time.Second
			r.mu.Lock()
			r.queue = r.queue[n:]
			r.mu.Unlock()
		}
	}
}

// send delivers one batch; it returns an error when the batch must be sent
// again (settlement unreachable, or it asked for a retry).
func (r *claimReporter) send(ctx context.Context, batch []*p2p.Receipt) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := r.h.CallSettle(cctx, r.platform, &p2p.SettleRequest{Op: p2p.OpClaims, Receipts: batch})
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
