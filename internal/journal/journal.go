// Package journal is the durable log of bills waiting for the settlement
// peer: a gateway's receipts, and a node's own claims for the calls it
// served (sent as receipts the node built; see p2p.OpClaims).
package journal

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/tokenrouter/tokenrouter/p2p"
)

// Journal keeps every receipt this gateway billed (or claim this node made)
// until the settlement peer has acknowledged it, so a process that crashes
// or restarts, or a settlement outage, loses no bill.
//
// It is an append-only log (receipts.log; gateways before it kept a Pebble
// store in the same directory, whose receipts the protocol no longer takes):
// a record for each receipt put and for each batch settlement acknowledged
// or refused. Refused receipts are also appended to refused.log (a JSON
// line each, with the reason; moved to refused.log.1 once it passes
// RefusedMax) for the operator; the log itself only keeps
// what is pending, and is rewritten once it is mostly settled. Put
// writes its record to the file (a write(2), into the kernel's page cache)
// before it returns, so a gateway process that dies at any point after
// answering a call has that call's receipt on disk. The fsync that makes
// records survive a power cut or a kernel crash runs in the background,
// shared by every record written in the last SyncInterval: on this
// machine's disk a synced write per call added 0.45 ms to every call (half
// of the gateway's whole cost) and took 15% of its throughput. A power cut
// can lose the receipts of calls answered in the last SyncInterval plus one
// fsync; those calls are then never billed (their holds expire back to the
// consumers), and nothing is billed twice. SyncEach makes Put wait for its
// fsync instead, as PostgreSQL's synchronous_commit does.
type Journal struct {
	path string
	cfg  Config

	mu      sync.Mutex
	f       *os.File
	closed  bool
	size    int64             // bytes in the file
	live    map[string][]byte // request id -> its put record's payload, pending
	liveLen int64             // the bytes of their payloads
	written uint64            // writes made (one or more records each)
	failed  error             // the file could not be repaired after a failed write

	syncMu  sync.Mutex
	synced  uint64 // records known durable
	syncErr error
	cond    *sync.Cond    // on syncMu: synced moved
	wake    chan struct{} // records were written
	quit    chan struct{} // Close: the sync loop ends
	stopped chan struct{}
}

// Config tunes the journal's durability.
type Config struct {
	// SyncInterval is the longest a written record waits for its fsync
	// (and the shortest gap between two fsyncs): under load, one fsync
	// covers the records of the last interval.
	SyncInterval time.Duration
	// SyncEach makes Put return only once its record is fsync'd.
	SyncEach bool
	// CompactAt is the file size past which the file is rewritten with only
	// the pending and refused receipts, when they are under half of it.
	CompactAt int64
	// RefusedMax is the size past which refused.log is renamed
	// refused.log.1 (replacing the one before): refused receipts keep at
	// most twice this on disk.
	RefusedMax int64
	// Logger gets a torn tail found at open (nil = discard).
	Logger *slog.Logger
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		SyncInterval: 2 * time.Millisecond, // a power cut loses at most the last few ms of bills; 500 fsyncs/s at most
		CompactAt:    64 << 20,             // ~2-3 minutes of receipts at 1,000 calls/s
		RefusedMax:   64 << 20,             // ~100k refused receipts to inspect; refusals are rare, so weeks of them
	}
}

// Record kinds.
const (
	recPut  = 'P' // payload: the receipt (a one-receipt ReceiptBatch, binary)
	recDone = 'D' // payload: request ids resolved (uvarint length + bytes, repeated)
)

// A record is: uvarint length of kind+payload, CRC-32C of kind+payload
// (4 bytes, little endian), kind, payload.
var crcTable = crc32.MakeTable(crc32.Castagnoli)

// maxRecord bounds one record (a Done record lists at most a batch).
const maxRecord = 64 << 20

// Files in the journal's directory.
const (
	journalFile = "receipts.log"
	refusedFile = "refused.log"
)

// ErrClosed is returned by writes after Close.
var ErrClosed = errors.New("gateway: receipt journal closed")

// Open opens (or creates) the journal in dir with the default
// configuration.
func Open(dir string) (*Journal, error) {
	return OpenConfig(dir, DefaultConfig())
}

// OpenConfig opens (or creates) the journal in dir. A record cut off
// by a crash at the end of the file is dropped (it was never acknowledged
// to anyone: its Put did not return).
func OpenConfig(dir string, cfg Config) (*Journal, error) {
	if cfg.SyncInterval <= 0 || cfg.CompactAt <= 0 || cfg.RefusedMax <= 0 {
		return nil, errors.New("gateway: journal sync interval, compaction size and refused.log size must be positive")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("gateway: receipt journal: %w", err)
	}
	j := &Journal{path: filepath.Join(dir, journalFile), cfg: cfg, live: map[string][]byte{},
		wake: make(chan struct{}, 1), quit: make(chan struct{}), stopped: make(chan struct{})}
	j.cond = sync.NewCond(&j.syncMu)
	if err := j.load(); err != nil {
		return nil, err
	}
	go j.syncLoop()
	return j, nil
}

// load reads the log, drops a torn tail and opens the file for appending.
func (j *Journal) load() error {
	f, err := os.OpenFile(j.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("gateway: open receipt journal: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("gateway: read receipt journal: %w", err)
	}
	good := 0
	for good < len(data) {
		kind, payload, n := readRecord(data[good:])
		if n == 0 {
			break
		}
		if err := j.apply(kind, payload); err != nil {
			f.Close()
			return fmt.Errorf("gateway: receipt journal record at byte %d: %w", good, err)
		}
		good += n
	}
	if good < len(data) {
		j.cfg.Logger.Warn("receipt journal: dropping a record cut off by a crash", "bytes", len(data)-good)
		if err := f.Truncate(int64(good)); err != nil {
			f.Close()
			return fmt.Errorf("gateway: truncate receipt journal: %w", err)
		}
	}
	j.f, j.size = f, int64(good)
	return nil
}

// readRecord decodes the record at the start of b; n is 0 when b does not
// start with a whole, intact record.
func readRecord(b []byte) (kind byte, payload []byte, n int) {
	size, k := binary.Uvarint(b)
	if k <= 0 || size == 0 || size > maxRecord || uint64(len(b)-k) < 4+size {
		return 0, nil, 0
	}
	sum := binary.LittleEndian.Uint32(b[k:])
	body := b[k+4 : k+4+int(size)]
	if crc32.Checksum(body, crcTable) != sum {
		return 0, nil, 0
	}
	return body[0], body[1:], k + 4 + int(size)
}

// apply folds one record into the in-memory state.
func (j *Journal) apply(kind byte, payload []byte) error {
	switch kind {
	case recPut:
		r, err := decodeReceipt(payload)
		if err != nil {
			return err
		}
		j.setLive(r.RequestID, bytes.Clone(payload))
	case recDone:
		for len(payload) > 0 {
			n, k := binary.Uvarint(payload)
			if k <= 0 || uint64(len(payload)-k) < n {
				return errors.New("damaged done record")
			}
			j.forget(string(payload[k : k+int(n)]))
			payload = payload[k+int(n):]
		}
	default:
		return fmt.Errorf("unknown record kind %q", kind)
	}
	return nil
}

// setLive and forget keep live and liveLen together.
func (j *Journal) setLive(id string, payload []byte) {
	j.forget(id)
	j.live[id] = payload
	j.liveLen += int64(len(payload))
}

func (j *Journal) forget(id string) {
	if p, ok := j.live[id]; ok {
		j.liveLen -= int64(len(p))
		delete(j.live, id)
	}
}

type refusedRecord struct {
	Receipt *p2p.Receipt `json:"receipt"`
	Reason  string       `json:"reason"`
	TimeMs  int64        `json:"time_ms"`
}

func encodeReceipt(r *p2p.Receipt) ([]byte, error) {
	b := &p2p.ReceiptBatch{Receipts: []*p2p.Receipt{r}, Refs: []int{-1}}
	return b.MarshalBinary()
}

func decodeReceipt(payload []byte) (*p2p.Receipt, error) {
	var b p2p.ReceiptBatch
	if err := b.UnmarshalBinary(payload); err != nil {
		return nil, err
	}
	if len(b.Receipts) != 1 || b.Receipts[0].RequestID == "" {
		return nil, errors.New("a put record without its receipt")
	}
	return b.Receipts[0], nil
}

// appendRecord frames kind and payload as a record.
func appendRecord(dst []byte, kind byte, payload []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(1+len(payload)))
	at := len(dst)
	dst = append(dst, 0, 0, 0, 0, kind)
	dst = append(dst, payload...)
	binary.LittleEndian.PutUint32(dst[at:], crc32.Checksum(dst[at+4:], crcTable))
	return dst
}

// write appends one record to the file (one write(2)) and returns its
// number. The caller holds j.mu.
func (j *Journal) write(kind byte, payload []byte) (uint64, error) {
	return j.writeRecords(appendRecord(make([]byte, 0, len(payload)+16), kind, payload))
}

// writeRecords appends encoded records in one write(2). The caller holds j.mu.
func (j *Journal) writeRecords(rec []byte) (uint64, error) {
	if j.closed {
		return 0, ErrClosed
	}
	if j.failed != nil {
		return 0, j.failed
	}
	if _, err := j.f.Write(rec); err != nil {
		// Cut off what part of the record was written, so later records can
		// be read back; if that fails too, nothing more is written.
		if terr := j.f.Truncate(j.size); terr != nil {
			j.failed = fmt.Errorf("gateway: receipt journal write failed and cannot be repaired: %w", errors.Join(err, terr))
			return 0, j.failed
		}
		return 0, fmt.Errorf("gateway: receipt journal write failed: %w", err)
	}
	j.size += int64(len(rec))
	j.written++
	select {
	case j.wake <- struct{}{}:
	default:
	}
	return j.written, nil
}

// Put records a receipt: written to the file before it returns, fsync'd
// within SyncInterval (before it returns with SyncEach).
func (j *Journal) Put(r *p2p.Receipt) error {
	if j == nil {
		return nil
	}
	payload, err := encodeReceipt(r)
	if err != nil {
		return err
	}
	j.mu.Lock()
	n, err := j.write(recPut, payload)
	if err == nil {
		j.setLive(r.RequestID, payload)
	}
	j.mu.Unlock()
	if err != nil || !j.cfg.SyncEach {
		return err
	}
	return j.waitSynced(n)
}

// PutBatch records receipts as Put does, all in one write(2).
func (j *Journal) PutBatch(rs []*p2p.Receipt) error {
	if j == nil || len(rs) == 0 {
		return nil
	}
	payloads := make([][]byte, len(rs))
	var buf []byte
	for i, r := range rs {
		p, err := encodeReceipt(r)
		if err != nil {
			return err
		}
		payloads[i] = p
		buf = appendRecord(buf, recPut, p)
	}
	j.mu.Lock()
	n, err := j.writeRecords(buf)
	if err == nil {
		for i, r := range rs {
			j.setLive(r.RequestID, payloads[i])
		}
	}
	j.mu.Unlock()
	if err != nil || !j.cfg.SyncEach {
		return err
	}
	return j.waitSynced(n)
}

// Done forgets receipts settlement acknowledged, in one record. It is not
// waited for: a Done lost to a power cut only resends receipts settlement
// already applied, which it answers as duplicates.
func (j *Journal) Done(requestIDs ...string) error {
	if j == nil || len(requestIDs) == 0 {
		return nil
	}
	var payload []byte
	for _, id := range requestIDs {
		payload = binary.AppendUvarint(payload, uint64(len(id)))
		payload = append(payload, id...)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, err := j.write(recDone, payload); err != nil {
		return err
	}
	for _, id := range requestIDs {
		j.forget(id)
	}
	return j.maybeCompact()
}

// keepRefused appends line to refused.log, first moving a full one to
// refused.log.1.
func (j *Journal) keepRefused(line []byte) error {
	name := filepath.Join(filepath.Dir(j.path), refusedFile)
	if fi, err := os.Stat(name); err == nil && fi.Size()+int64(len(line)) > j.cfg.RefusedMax {
		if err := os.Rename(name, name+".1"); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(line)
	return errors.Join(err, f.Close())
}

// Refused moves a receipt settlement refused on its merits out of the
// pending set, adding it to refused.log for the operator to inspect.
func (j *Journal) Refused(r *p2p.Receipt, reason string) error {
	if j == nil {
		return nil
	}
	line, err := json.Marshal(refusedRecord{r, reason, time.Now().UnixMilli()})
	if err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return ErrClosed
	}
	// Kept first, then resolved: a crash in between only sends it again.
	if err := j.keepRefused(append(line, '\n')); err != nil {
		return fmt.Errorf("gateway: refused receipts file: %w", err)
	}
	payload := binary.AppendUvarint(nil, uint64(len(r.RequestID)))
	payload = append(payload, r.RequestID...)
	if _, err := j.write(recDone, payload); err != nil {
		return err
	}
	j.forget(r.RequestID)
	return j.maybeCompact()
}

// Pending returns every receipt not yet acknowledged.
func (j *Journal) Pending() ([]*p2p.Receipt, error) {
	if j == nil {
		return nil, nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]*p2p.Receipt, 0, len(j.live))
	for id, payload := range j.live {
		r, err := decodeReceipt(payload)
		if err != nil {
			return nil, fmt.Errorf("gateway: journal entry %q is damaged: %w", id, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// maybeCompact rewrites the file with only the pending receipts once it
// is large and mostly settled. The caller holds j.mu.
func (j *Journal) maybeCompact() error {
	if j.size < j.cfg.CompactAt || j.liveLen+16*int64(len(j.live)) > j.size/2 {
		return nil // small, or mostly pending (settlement is away): rewriting would not pay
	}
	buf := make([]byte, 0, j.liveLen+16*int64(len(j.live)))
	for _, payload := range j.live {
		buf = appendRecord(buf, recPut, payload)
	}
	tmp := j.path + ".tmp"
	if err := writeSynced(tmp, buf); err != nil {
		return fmt.Errorf("gateway: compact receipt journal: %w", err)
	}
	if err := os.Rename(tmp, j.path); err != nil {
		return fmt.Errorf("gateway: compact receipt journal: %w", err)
	}
	syncDir(filepath.Dir(j.path))
	f, err := os.OpenFile(j.path, os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		j.failed = fmt.Errorf("gateway: reopen receipt journal: %w", err)
		return j.failed
	}
	old := j.f
	j.f, j.size = f, int64(len(buf))
	old.Close()
	// Everything written so far is in the new file, synced.
	j.syncMu.Lock()
	j.synced = j.written
	j.cond.Broadcast()
	j.syncMu.Unlock()
	return nil
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// syncLoop fsyncs what was written, at most once a SyncInterval, until
// Close.
func (j *Journal) syncLoop() {
	defer close(j.stopped)
	gap := time.NewTimer(0)
	defer gap.Stop()
	for {
		select {
		case <-j.wake:
		case <-j.quit:
			return
		}
		j.mu.Lock()
		target, f := j.written, j.f
		j.mu.Unlock()
		err := f.Sync()
		if err != nil {
			j.mu.Lock()
			if f != j.f || j.closed {
				err = nil // a file compaction or Close replaced, synced already
			}
			j.mu.Unlock()
		}
		j.syncMu.Lock()
		if err != nil && j.syncErr == nil {
			j.syncErr = fmt.Errorf("gateway: receipt journal fsync failed: %w", err)
		}
		if err == nil && target > j.synced {
			j.synced = target
		}
		j.cond.Broadcast()
		j.syncMu.Unlock()
		gap.Reset(j.cfg.SyncInterval)
		select {
		case <-gap.C:
		case <-j.quit:
			return
		}
	}
}

// waitSynced waits until record n is durable.
func (j *Journal) waitSynced(n uint64) error {
	j.syncMu.Lock()
	defer j.syncMu.Unlock()
	for j.synced < n && j.syncErr == nil {
		j.cond.Wait()
	}
	return j.syncErr
}

// Close syncs and closes the journal.
func (j *Journal) Close() error {
	if j == nil {
		return nil
	}
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil
	}
	j.closed = true
	err := j.f.Sync()
	err = errors.Join(err, j.f.Close())
	j.mu.Unlock()
	close(j.quit)
	<-j.stopped
	j.syncMu.Lock()
	j.synced = j.written
	if j.syncErr == nil && err != nil {
		j.syncErr = err
	}
	j.cond.Broadcast()
	j.syncMu.Unlock()
	return err
}
