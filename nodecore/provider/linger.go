package provider

import (
	"io"
	"time"
)

// lingerFlusher sends what the node relayed to the gateway before it waits
// on the engine for more: chunks the engine already sent go in one write,
// and a chunk with no successor yet leaves at once. When chunks come faster
// than one per linger, though, a chunk waits for the next write, at most
// linger after the last: a cloud API or a small model on a fast GPU streams
// hundreds of chunks a second, and one write (a TLS record, a yamux frame
// and a syscall on each side, and a wake-up of each process after) per
// chunk cost more than the chunk itself. A chunk that comes after a pause
// of linger or more is never held, so a model streaming under 1/linger
// chunks a second is relayed exactly as before.
type lingerFlusher struct {
	r      io.Reader
	c      *call // its mu guards the fields below and c.w
	linger time.Duration

	last  time.Time // the last flush
	timer *time.Timer
	armed bool  // the timer will flush
	done  bool  // the stream is over: the timer must not touch c.w
	err   error // the flush that failed: the gateway is gone
}

func (f *lingerFlusher) Read(p []byte) (int, error) {
	if err := f.beforeRead(); err != nil {
		return 0, err
	}
	return f.r.Read(p)
}

func (f *lingerFlusher) beforeRead() error {
	c := f.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.err != nil || c.w.Buffered() == 0 {
		return f.err
	}
	now := time.Now()
	wait := f.linger - now.Sub(f.last)
	if wait <= 0 {
		return f.flushLocked(now)
	}
	if !f.armed {
		f.armed = true
		if f.timer == nil {
			f.timer = time.AfterFunc(wait, f.fire)
		} else {
			f.timer.Reset(wait)
		}
	}
	return nil
}

// fire flushes the chunks that lingered.
func (f *lingerFlusher) fire() {
	c := f.c
	c.mu.Lock()
	defer c.mu.Unlock()
	f.armed = false
	if f.done || f.err != nil || c.w.Buffered() == 0 {
		return
	}
	f.flushLocked(time.Now())
}

func (f *lingerFlusher) flushLocked(now time.Time) error {
	if err := f.c.w.Flush(); err != nil {
		f.err = err
		return err
	}
	f.last = now
	return nil
}

// failed is the flush error, if one failed.
func (f *lingerFlusher) failed() error {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	return f.err
}

// stop ends the lingering: after it the timer never touches the writer.
func (f *lingerFlusher) stop() {
	f.c.mu.Lock()
	f.done = true
	f.c.mu.Unlock()
	if f.timer != nil {
		f.timer.Stop()
	}
}
