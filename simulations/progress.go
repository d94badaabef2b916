package simulations

import (
	"io"
	"os"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progressThrottle is the shortest interval between two redraws of the bar.
const progressThrottle = 100 * time.Millisecond

// Progress reports how far a run is. On a terminal it draws a bar; otherwise it is silent.
//
// A nil *Progress is valid and silent. Its methods are safe for concurrent use.
type Progress struct {
	bar      *progressbar.ProgressBar // nil when silent
	total    int64
	step     int64        // smallest move worth passing to the bar: 0.1% of total, at least 1
	last     atomic.Int64 // last value passed to the bar
	finished atomic.Bool
}

// NewProgress returns a Progress for a run of total steps described by desc.
// It draws a bar on w only if w is an *os.File that is a terminal (stderr in
// practice) and total > 0; otherwise nothing at all is ever written to w.
// The bar shows the description, percent, count, rate and ETA, and is
// cleared by Finish.
func NewProgress(w io.Writer, total int64, desc string) *Progress {
	p := &Progress{total: total, step: max(total/1000, 1)}
	f, ok := w.(*os.File)
	if !ok || f == nil || total <= 0 || !term.IsTerminal(int(f.Fd())) {
		return p
	}
	if desc != "" {
		desc += " "
	}
	p.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(f),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionSetWidth(30),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(progressThrottle),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetRenderBlankState(true),
	)
	return p
}

// Set records that done of total steps are complete. It is cheap enough to
// call on every simulated event: moves smaller than 0.1% of total are
// dropped, and the bar redraws at most every 100ms.
func (p *Progress) Set(done int64) {
	if p == nil || p.bar == nil || p.finished.Load() {
		return
	}
	done = min(max(done, 0), p.total)
	last := p.last.Load()
	if d := done - last; d < p.step && -d < p.step && done != p.total {
		return
	}
	if !p.last.CompareAndSwap(last, done) {
		return // another goroutine is reporting at the same moment
	}
	_ = p.bar.Set64(done)
}

// Finish completes the bar and clears it from the terminal. Later calls to
// Set and Finish do nothing.
func (p *Progress) Finish() {
	if p == nil || p.bar == nil || !p.finished.CompareAndSwap(false, true) {
		return
	}
	_ = p.bar.Finish()
}
