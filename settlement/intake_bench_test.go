package settlement

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// receiptBench is a settlement peer on a real Pebble ledger on disk with
// consumers, nodes and one gateway, and receipt batches signed the way a
// gateway signs them (one gateway signature, one claim batch per node).
type receiptBench struct {
	s         *Settlement
	gw        crypto.PrivKey
	gwID      peer.ID
	nodes     []crypto.PrivKey
	consumers []string
	grants    map[string]*p2p.Grant
}

const (
	benchBatch     = 1000 // receipts per gateway batch
	benchNodes     = 10
	benchConsumers = 1000
)

func newReceiptBench(b *testing.B) *receiptBench {
	b.Helper()
	ctx := context.Background()
	h, err := p2p.NewHost(ctx, p2p.Config{DataDir: b.TempDir(), Listen: []string{"/ip4/127.0.0.1/tcp/0"}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	led, err := ledger.Open(b.TempDir(), ledger.Options{Signer: h.Key})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { led.Close() })
	cfg := DefaultConfig()
	cfg.Host, cfg.Ledger = h, led
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ictx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { s.intake.run(ictx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })

	rb := &receiptBench{s: s, grants: map[string]*p2p.Grant{}}
	rb.gw, _, _ = crypto.GenerateEd25519Key(rand.Reader)
	rb.gwID, _ = peer.IDFromPrivateKey(rb.gw)
	for range benchNodes {
		k, _, _ := crypto.GenerateEd25519Key(rand.Reader)
		rb.nodes = append(rb.nodes, k)
	}
	for range benchConsumers {
		a, _, err := led.CreateAccount(1_000_000_000_000) // plenty: the benchmark measures intake, not refusals
		if err != nil {
			b.Fatal(err)
		}
		rb.consumers = append(rb.consumers, a.ID)
		rb.grants[a.ID] = s.grant(a.ID, rb.gwID)
	}
	return rb
}

// batch builds one signed batch of fresh receipts, tag making ids unique,
// and returns it as it travels: encoded for the wire.
func (rb *receiptBench) batch(b *testing.B, tag int) []byte {
	price := economy.DefaultPriceTable().For("bench-model")
	out := &p2p.ReceiptBatch{Gateway: rb.gwID.String(), Refs: make([]int, benchBatch)}
	byNode := make([][][32]byte, benchNodes)
	for i := range benchBatch {
		nk := rb.nodes[i%benchNodes]
		nid, _ := peer.IDFromPrivateKey(nk)
		consumer := rb.consumers[(tag*benchBatch+i)%benchConsumers]
		claim := p2p.NodeClaim{RequestID: fmt.Sprintf("req_%d_%d", tag, i), Model: "bench-model", Node: nid.String(),
			Gateway: rb.gwID.String(), PromptTokens: 120, CompletionTokens: 300}
		r := &p2p.Receipt{RequestID: claim.RequestID, Model: claim.Model, Consumer: consumer, Node: claim.Node,
			Gateway: claim.Gateway, PromptTokens: 120, CompletionTokens: 300, Price: price,
			CostUcr: economy.Cost(price, 120, 300), TimeMs: time.Now().UnixMilli(), Claim: claim, Grant: rb.grants[consumer]}
		out.Receipts = append(out.Receipts, r)
		out.Refs[i] = i % benchNodes
		byNode[i%benchNodes] = append(byNode[i%benchNodes], claim.Hash())
	}
	for n, hashes := range byNode {
		nid, _ := peer.IDFromPrivateKey(rb.nodes[n])
		cb, err := p2p.SignClaimBatch(rb.nodes[n], nid.String(), rb.gwID.String(), hashes)
		if err != nil {
			b.Fatal(err)
		}
		out.Claims = append(out.Claims, cb)
	}
	if err := out.Sign(rb.gw); err != nil {
		b.Fatal(err)
	}
	wire, err := encodeBatch(out)
	if err != nil {
		b.Fatal(err)
	}
	return wire
}

// encodeBatch and decodeBatch are the settle protocol's wire encoding of a
// receipt batch.
func encodeBatch(rb *p2p.ReceiptBatch) ([]byte, error) { return rb.MarshalBinary() }

func decodeBatch(wire []byte) (*p2p.ReceiptBatch, error) {
	var rb p2p.ReceiptBatch
	return &rb, rb.UnmarshalBinary(wire)
}

// BenchmarkReceiptIntake is durable receipts per second through the whole
// settlement path: decoding the batch off the wire, batch and claim-batch
// signatures, grants, price and cost checks, the split with bounty and
// anti-flap legs, and synced Pebble batches with their chain links.
//
// Four gateways send at once, as many do in production, so one batch's
// signature checks overlap another's commit.
func BenchmarkReceiptIntake(b *testing.B) { benchIntake(b, false) }

// BenchmarkReceiptIntakeWithClaims is BenchmarkReceiptIntake where every
// call's node reported its own claim before the receipt came (the usual
// order is either): each receipt also finds and drops the claim waiting
// for it, and its side record goes in a batched delete.
func BenchmarkReceiptIntakeWithClaims(b *testing.B) { benchIntake(b, true) }

func benchIntake(b *testing.B, claims bool) {
	rb := newReceiptBench(b)
	const gateways = 4
	tag := 0
	var total int
	for b.Loop() {
		b.StopTimer()
		batches := make([][]byte, gateways)
		for g := range batches {
			batches[g] = rb.batch(b, tag)
			tag++
			if claims {
				rb.pendClaims(b, batches[g])
			}
		}
		b.StartTimer()
		var wg sync.WaitGroup
		for _, wire := range batches {
			wg.Go(func() {
				batch, err := decodeBatch(wire)
				if err != nil {
					b.Error(err)
					return
				}
				for i, o := range rb.s.ApplyReceiptBatch(rb.gwID, batch) {
					if o.Err != nil || !o.Applied {
						b.Errorf("receipt %d: %+v", i, o)
						return
					}
				}
			})
		}
		wg.Wait()
		total += gateways * benchBatch
	}
	b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "receipts/s")
}

// pendClaims records the nodes' own claims for a batch's calls, as
// handleClaims does when they arrive before the receipts.
func (rb *receiptBench) pendClaims(b *testing.B, wire []byte) {
	batch, err := decodeBatch(wire)
	if err != nil {
		b.Fatal(err)
	}
	kvs := map[string][]byte{}
	now := time.Now()
	book := rb.s.book
	book.mu.Lock()
	for _, r := range batch.Receipts {
		k := callKey(r.Gateway, r.RequestID)
		v, _ := json.Marshal(pendingClaim{R: r, At: now})
		kvs[sideClaim+k] = v
		book.pending[k] = &pendingClaim{R: r, At: now}
	}
	book.mu.Unlock()
	if err := rb.s.led.PutSide(kvs); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkReceiptRawPebbleFloor writes the same receipt bytes (the batch
// as it arrives on the wire, one record per receipt) to a raw Pebble batch
// with one fsync: the floor BenchmarkReceiptIntake is compared with.
func BenchmarkReceiptRawPebbleFloor(b *testing.B) {
	rb := newReceiptBench(b)
	db, err := pebble.Open(b.TempDir(), &pebble.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	tag := 0
	var total int
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		wire := rb.batch(b, tag)
		tag++
		batch, _ := decodeBatch(wire)
		recs := make([][]byte, len(batch.Receipts))
		for i, r := range batch.Receipts {
			recs[i], _ = json.Marshal(r)
		}
		b.StartTimer()
		wb := db.NewBatch()
		for i, rec := range recs {
			wb.Set([]byte(batch.Receipts[i].RequestID), rec, nil)
		}
		if err := wb.Commit(pebble.Sync); err != nil {
			b.Fatal(err)
		}
		total += benchBatch
	}
	b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "receipts/s")
}
