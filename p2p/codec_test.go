package p2p

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"runtime"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// Randomized batches.

func codecRandBytes(r *rand.Rand) []byte {
	var n int
	switch r.IntN(8) {
	case 0:
		return nil
	case 1:
		return []byte{} // decodes as nil
	case 2:
		n = 128 + r.IntN(300) // multi-byte length prefix
	default:
		n = 1 + r.IntN(70)
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func codecRandString(r *rand.Rand) string { return string(codecRandBytes(r)) }

func codecRandInt(r *rand.Rand) int64 {
	switch r.IntN(8) {
	case 0:
		return 0
	case 1:
		return math.MinInt64
	case 2:
		return math.MaxInt64
	case 3:
		return -r.Int64N(1000)
	case 4:
		return r.Int64N(200)
	case 5:
		return -r.Int64()
	default:
		return r.Int64()
	}
}

func codecRandClaim(r *rand.Rand) NodeClaim {
	return NodeClaim{
		RequestID: codecRandString(r), Model: codecRandString(r), Node: codecRandString(r), Gateway: codecRandString(r),
		PromptTokens: codecRandInt(r), CompletionTokens: codecRandInt(r),
		Estimated: r.IntN(2) == 0, Incomplete: r.IntN(2) == 0,
	}
}

func codecRandBatch(r *rand.Rand) *ReceiptBatch {
	b := &ReceiptBatch{Gateway: codecRandString(r), Sig: codecRandBytes(r)}
	switch r.IntN(4) {
	case 0: // nil
	case 1:
		b.Receipts = []*Receipt{}
	default:
		for range r.IntN(20) {
			rc := &Receipt{
				RequestID: codecRandString(r), Model: codecRandString(r), Consumer: codecRandString(r),
				Node: codecRandString(r), Gateway: codecRandString(r),
				PromptTokens: codecRandInt(r), CompletionTokens: codecRandInt(r),
				Price:   economy.Price{InputPer1M: codecRandInt(r), OutputPer1M: codecRandInt(r)},
				CostUcr: codecRandInt(r), TimeMs: codecRandInt(r),
				Claim: codecRandClaim(r), NodeMAC: codecRandBytes(r),
				Hold: codecRandString(r), GatewaySig: codecRandBytes(r),
			}
			if r.IntN(3) > 0 {
				rc.Grant = &Grant{Account: codecRandString(r), Gateway: codecRandString(r), ExpiresMs: codecRandInt(r), Sig: codecRandBytes(r)}
			}
			b.Receipts = append(b.Receipts, rc)
		}
	}
	switch r.IntN(4) {
	case 0:
	case 1:
		b.Claims = []*ClaimBatch{}
	default:
		for range r.IntN(5) {
			b.Claims = append(b.Claims, &ClaimBatch{Node: codecRandString(r), Gateway: codecRandString(r), Hashes: codecRandBytes(r), Sig: codecRandBytes(r)})
		}
	}
	switch r.IntN(4) {
	case 0:
	case 1:
		b.Refs = []int{}
	default:
		for range r.IntN(30) {
			b.Refs = append(b.Refs, int(codecRandInt(r)))
		}
	}
	return b
}

// codecNormalize applies the decoder's convention to a batch: every empty
// slice is nil.
func codecNormalize(b *ReceiptBatch) {
	nb := func(p *[]byte) {
		if len(*p) == 0 {
			*p = nil
		}
	}
	nb(&b.Sig)
	if len(b.Receipts) == 0 {
		b.Receipts = nil
	}
	for _, r := range b.Receipts {
		nb(&r.NodeMAC)
		nb(&r.GatewaySig)
		if r.Grant != nil {
			nb(&r.Grant.Sig)
		}
	}
	if len(b.Claims) == 0 {
		b.Claims = nil
	}
	for _, c := range b.Claims {
		nb(&c.Hashes)
		nb(&c.Sig)
	}
	if len(b.Refs) == 0 {
		b.Refs = nil
	}
}

func TestReceiptBatchBinaryRoundTrip(t *testing.T) {
	for seed := range uint64(3000) {
		r := rand.New(rand.NewPCG(seed, 0xc0dec))
		in := codecRandBatch(r)
		enc, err := in.MarshalBinary()
		if err != nil {
			t.Fatalf("seed %d: encode: %v", seed, err)
		}
		// AppendBinary appends after what dst holds.
		prefix := []byte("prefix")
		app, err := in.AppendBinary(bytes.Clone(prefix))
		if err != nil || !bytes.Equal(app, append(prefix, enc...)) {
			t.Fatalf("seed %d: AppendBinary differs from MarshalBinary (err %v)", seed, err)
		}
		var out ReceiptBatch
		if err := out.UnmarshalBinary(enc); err != nil {
			t.Fatalf("seed %d: decode: %v", seed, err)
		}
		codecNormalize(in)
		if !reflect.DeepEqual(in, &out) {
			t.Fatalf("seed %d: round trip differs\n in: %+v\nout: %+v", seed, in, &out)
		}
		// The encoding is canonical: the normalized batch encodes the same.
		if enc2, _ := out.MarshalBinary(); !bytes.Equal(enc, enc2) {
			t.Fatalf("seed %d: re-encoding differs", seed)
		}
	}
}

// The decoded batch owns its memory: changing the input afterwards changes
// nothing, and appending to a decoded []byte does not overwrite its
// neighbours.
func TestReceiptBatchBinaryOwnsMemory(t *testing.T) {
	in := &ReceiptBatch{
		Gateway: "gw",
		Receipts: []*Receipt{{
			RequestID: "req", NodeMAC: []byte{1, 2, 3}, Hold: "hold", GatewaySig: []byte{4, 5, 6},
			Grant: &Grant{Account: "acct", Sig: []byte{7, 8}},
		}},
		Refs: []int{-1},
		Sig:  []byte{9},
	}
	enc, err := in.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var out ReceiptBatch
	if err := out.UnmarshalBinary(enc); err != nil {
		t.Fatal(err)
	}
	for i := range enc {
		enc[i] = 0xff
	}
	rc := out.Receipts[0]
	_ = append(rc.NodeMAC, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee)
	_ = append(rc.Grant.Sig, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee)
	if !reflect.DeepEqual(in, &out) {
		t.Fatalf("decoded batch changed:\n in: %+v\nout: %+v", in, &out)
	}
}

func TestReceiptBatchBinaryNilElements(t *testing.T) {
	for _, b := range []*ReceiptBatch{
		{Receipts: []*Receipt{{}, nil}},
		{Claims: []*ClaimBatch{nil}},
	} {
		dst := []byte("keep")
		got, err := b.AppendBinary(dst)
		if err == nil {
			t.Fatalf("encoded a nil element")
		}
		if string(got) != "keep" {
			t.Fatalf("dst changed on error: %q", got)
		}
	}
}

// Signed batches.

type codecSignedFixture struct {
	batch      *ReceiptBatch
	settlement crypto.PrivKey
}

func newCodecSignedBatch(t testing.TB, seed uint64) codecSignedFixture {
	t.Helper()
	rnd := rand.NewChaCha8([32]byte{byte(seed)})
	key := func() (crypto.PrivKey, string) {
		k, _, err := crypto.GenerateEd25519Key(rnd)
		if err != nil {
			t.Fatal(err)
		}
		id, err := peer.IDFromPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return k, id.String()
	}
	gwKey, gw := key()
	setKey, setIDText := key()
	setID, err := peer.Decode(setIDText)
	if err != nil {
		t.Fatal(err)
	}
	type node struct {
		key    crypto.PrivKey
		id     string
		hashes [][32]byte
	}
	nodes := make([]*node, 3)
	for i := range nodes {
		k, id := key()
		nodes[i] = &node{key: k, id: id}
	}
	b := &ReceiptBatch{Gateway: gw}
	var owner []int
	for i := range 12 {
		n := nodes[i%len(nodes)]
		c := NodeClaim{
			RequestID: fmt.Sprintf("req_%026d", i), Model: "llama-3.1-8b-instruct", Node: n.id, Gateway: gw,
			PromptTokens: int64(100 + i), CompletionTokens: int64(300 + 40*i), Estimated: i%5 == 0, Incomplete: i%7 == 0,
		}
		sig := claimMAC(t, n.key, setID, c)
		price := economy.Price{InputPer1M: 150_000, OutputPer1M: 600_000}
		r := &Receipt{
			RequestID: c.RequestID, Model: c.Model, Consumer: fmt.Sprintf("acct_%d", i%4), Node: n.id, Gateway: gw,
			PromptTokens: c.PromptTokens, CompletionTokens: c.CompletionTokens - int64(i%3),
			Price: price, CostUcr: economy.Cost(price, c.PromptTokens, c.CompletionTokens-int64(i%3)),
			TimeMs: 1_760_000_000_000 + int64(i), Claim: c, NodeMAC: sig,
		}
		if i%4 != 3 {
			r.Grant = &Grant{Account: r.Consumer, Gateway: gw, ExpiresMs: 1_760_000_600_000}
			if err := r.Grant.Sign(setKey); err != nil {
				t.Fatal(err)
			}
			r.Hold = fmt.Sprintf("hold_%d", i)
		}
		if err := r.Sign(gwKey); err != nil {
			t.Fatal(err)
		}
		n.hashes = append(n.hashes, c.Hash())
		owner = append(owner, i%len(nodes))
		b.Receipts = append(b.Receipts, r)
	}
	// Nodes 0 and 1 signed claim batches; node 2's receipts rely on NodeMAC.
	for _, n := range nodes[:2] {
		cb, err := SignClaimBatch(n.key, n.id, gw, n.hashes)
		if err != nil {
			t.Fatal(err)
		}
		b.Claims = append(b.Claims, cb)
	}
	for _, o := range owner {
		if o < len(b.Claims) {
			b.Refs = append(b.Refs, o)
		} else {
			b.Refs = append(b.Refs, -1)
		}
	}
	if err := b.Sign(gwKey); err != nil {
		t.Fatal(err)
	}
	return codecSignedFixture{batch: b, settlement: setKey}
}

// codecVerifyAll runs every check settlement could make on a batch.
func codecVerifyAll(b *ReceiptBatch, settlement crypto.PrivKey) error {
	if err := b.VerifyGateway(); err != nil {
		return err
	}
	v, err := NewClaimVerifier(settlement)
	if err != nil {
		return err
	}
	sets := make([]map[[32]byte]struct{}, len(b.Claims))
	for i, c := range b.Claims {
		if err := c.Verify(); err != nil {
			return err
		}
		if c.Gateway != b.Gateway {
			return errors.New("claim batch for another gateway")
		}
		sets[i] = c.Set()
	}
	for i, r := range b.Receipts {
		if r.Gateway != b.Gateway {
			return errors.New("receipt of another gateway")
		}
		if err := r.Verify(v); err != nil {
			return err
		}
		if ref := b.Refs[i]; ref >= 0 {
			if _, ok := sets[ref][r.Claim.Hash()]; !ok || b.Claims[ref].Node != r.Node {
				return errors.New("claim not in its batch")
			}
		}
		if r.Grant != nil {
			if err := r.Grant.Verify(settlement.GetPublic()); err != nil {
				return err
			}
		}
	}
	return nil
}

func TestReceiptBatchBinarySigned(t *testing.T) {
	fx := newCodecSignedBatch(t, 1)
	if err := codecVerifyAll(fx.batch, fx.settlement); err != nil {
		t.Fatalf("fixture does not verify: %v", err)
	}
	enc, err := fx.batch.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var out ReceiptBatch
	if err := out.UnmarshalBinary(enc); err != nil {
		t.Fatal(err)
	}
	if err := codecVerifyAll(&out, fx.settlement); err != nil {
		t.Fatalf("decoded batch does not verify: %v", err)
	}
	if !reflect.DeepEqual(fx.batch, &out) {
		t.Fatal("decoded batch differs")
	}
	js, _ := json.Marshal(fx.batch)
	t.Logf("%d receipts: binary %d bytes, JSON %d bytes", len(out.Receipts), len(enc), len(js))

	// Any one changed byte fails decoding or verification.
	r := rand.New(rand.NewPCG(7, 7))
	decodeFails, verifyFails := 0, 0
	for range 200 {
		pos := r.IntN(len(enc))
		mut := bytes.Clone(enc)
		mut[pos] ^= byte(1 + r.IntN(255))
		var m ReceiptBatch
		if err := m.UnmarshalBinary(mut); err != nil {
			if !errors.Is(err, ErrBadEncoding) {
				t.Fatalf("byte %d: error %v does not wrap ErrBadEncoding", pos, err)
			}
			decodeFails++
			continue
		}
		if codecVerifyAll(&m, fx.settlement) == nil {
			t.Fatalf("byte %d changed (%#x -> %#x) and the batch still verifies", pos, enc[pos], mut[pos])
		}
		verifyFails++
	}
	t.Logf("200 flips: %d failed decoding, %d failed verification", decodeFails, verifyFails)
}

// Malformed input.

func TestReceiptBatchBinaryTruncated(t *testing.T) {
	fx := newCodecSignedBatch(t, 2)
	enc, _ := fx.batch.MarshalBinary()
	for n := range len(enc) {
		var b ReceiptBatch
		err := b.UnmarshalBinary(enc[:n])
		if !errors.Is(err, ErrBadEncoding) {
			t.Fatalf("prefix of %d/%d bytes: got %v", n, len(enc), err)
		}
		if b.Gateway != "" || b.Receipts != nil {
			t.Fatalf("prefix of %d bytes: batch changed on error", n)
		}
	}
	for _, tail := range [][]byte{{0}, {1}, []byte("garbage")} {
		var b ReceiptBatch
		if err := b.UnmarshalBinary(append(bytes.Clone(enc), tail...)); !errors.Is(err, ErrBadEncoding) {
			t.Fatalf("trailing %q accepted: %v", tail, err)
		}
	}
}

func TestReceiptBatchBinaryMalformed(t *testing.T) {
	uv := func(v uint64) []byte { return binary.AppendUvarint(nil, v) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	empty := []byte{1, 0, 0, 0, 0, 0} // version, gateway, receipts, claims, refs, sig
	var ok ReceiptBatch
	if err := ok.UnmarshalBinary(empty); err != nil {
		t.Fatalf("empty batch: %v", err)
	}
	for name, data := range map[string][]byte{
		"nil":                   nil,
		"version 0":             {0, 0, 0, 0, 0, 0},
		"version 2":             {2, 0, 0, 0, 0, 0},
		"huge gateway":          cat([]byte{1}, uv(1<<60), []byte("x")),
		"huge receipts":         cat([]byte{1, 0}, uv(1<<60), []byte("x")),
		"max receipts":          cat([]byte{1, 0}, uv(math.MaxUint64), []byte("x")),
		"huge claims":           cat([]byte{1, 0, 0}, uv(1<<60), []byte("x")),
		"huge refs":             cat([]byte{1, 0, 0, 0}, uv(1<<60), []byte("x")),
		"huge sig":              cat([]byte{1, 0, 0, 0, 0}, uv(1<<62)),
		"receipts past input":   cat([]byte{1, 0}, uv(2), make([]byte, 2*minReceiptSize-1)),
		"varint overflow":       {1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0},
		"unterminated varint":   {1, 0x80},
		"non-minimal varint":    {1, 0x80, 0x00, 0, 0, 0, 0},
		"non-minimal ref":       {1, 0, 0, 0, 1, 0x82, 0x00, 0},
		"bad bool":              cat([]byte{1, 0, 1}, make([]byte, 5+6+4+2), []byte{0, 2}, make([]byte, 6)),
		"bad grant presence":    cat([]byte{1, 0, 1}, make([]byte, 5+6+4+2+2), []byte{0, 2, 0, 0, 0, 0, 0, 0}),
		"claims count past end": {1, 0, 0, 5, 0, 0, 0, 0},
	} {
		var b ReceiptBatch
		if err := b.UnmarshalBinary(data); !errors.Is(err, ErrBadEncoding) {
			t.Errorf("%s: got %v, want ErrBadEncoding", name, err)
		}
	}
	// Sanity of the hand-made receipt above: with valid bytes it decodes.
	good := cat([]byte{1, 0, 1}, make([]byte, 5+6+4+2+2+1+1+1+1), []byte{0, 0, 0})
	if err := ok.UnmarshalBinary(good); err != nil || len(ok.Receipts) != 1 {
		t.Fatalf("minimal receipt: %v", err)
	}
	if len(good) != 1+1+1+minReceiptSize+3 {
		t.Fatalf("minReceiptSize %d is not the smallest receipt", minReceiptSize)
	}
}

// A lying length prefix must not make the decoder allocate.
func TestReceiptBatchBinaryHugeLengthNoAlloc(t *testing.T) {
	for _, data := range [][]byte{
		binary.AppendUvarint([]byte{1, 0}, 1<<60),
		binary.AppendUvarint([]byte{1, 0, 0}, 1<<60),
		binary.AppendUvarint([]byte{1, 0, 0, 0}, 1<<60),
		binary.AppendUvarint([]byte{1}, 1<<60),
	} {
		var ms0, ms1 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		const runs = 100
		for range runs {
			var b ReceiptBatch
			if err := b.UnmarshalBinary(data); err == nil {
				t.Fatal("decoded")
			}
		}
		runtime.ReadMemStats(&ms1)
		if per := (ms1.TotalAlloc - ms0.TotalAlloc) / runs; per > 1024 {
			t.Fatalf("%x: %d bytes allocated per decode", data, per)
		}
	}
}

func FuzzReceiptBatchDecode(f *testing.F) {
	// Small seeds only: the fuzzer minimizes every new interesting input
	// (up to a minute each by default), which for inputs of kilobytes
	// takes the whole of a short -fuzztime.
	for seed, added := uint64(0), 0; added < 20; seed++ {
		enc, _ := codecRandBatch(rand.New(rand.NewPCG(seed, 1))).MarshalBinary()
		if len(enc) <= 256 {
			f.Add(enc)
			added++
		}
	}
	f.Add([]byte{1, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		var b ReceiptBatch
		if err := b.UnmarshalBinary(data); err != nil {
			if !errors.Is(err, ErrBadEncoding) {
				t.Fatalf("error %v does not wrap ErrBadEncoding", err)
			}
			return
		}
		enc, err := b.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		// The encoding is canonical: what decodes re-encodes to itself.
		if !bytes.Equal(enc, data) {
			t.Fatalf("re-encoding differs:\n in: %x\nout: %x", data, enc)
		}
		var b2 ReceiptBatch
		if err := b2.UnmarshalBinary(enc); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(&b, &b2) {
			t.Fatal("second decode differs")
		}
	})
}

// Benchmarks on a realistic 1,000-receipt batch.

const codecBenchReceipts = 1000

func newCodecBenchBatch(b *testing.B) *ReceiptBatch {
	cc := rand.NewChaCha8([32]byte{42})
	rnd := rand.New(cc)
	id := func() string {
		k, _, err := crypto.GenerateEd25519Key(cc)
		if err != nil {
			b.Fatal(err)
		}
		p, _ := peer.IDFromPrivateKey(k)
		return p.String() // 12D3KooW...
	}
	const alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
	ulid := func(prefix string) string {
		s := []byte(prefix)
		for range 26 {
			s = append(s, alphabet[rnd.IntN(len(alphabet))])
		}
		return string(s)
	}
	sig := func(n int) []byte {
		s := make([]byte, n)
		for i := range s {
			s[i] = byte(rnd.Uint32())
		}
		return s
	}
	gw := id()
	nodes := make([]string, 20)
	for i := range nodes {
		nodes[i] = id()
	}
	models := []string{"llama-3.1-8b-instruct", "qwen2.5-72b-instruct", "mistral-small-24b", "deepseek-r1-distill-qwen-32b"}
	accounts := make([]string, 50)
	for i := range accounts {
		accounts[i] = ulid("acct_")
	}
	batch := &ReceiptBatch{Gateway: gw, Sig: sig(64)}
	perNode := make([]int, len(nodes))
	for range codecBenchReceipts {
		ni := rnd.IntN(len(nodes))
		perNode[ni]++
		c := NodeClaim{
			RequestID: ulid("req_"), Model: models[rnd.IntN(len(models))], Node: nodes[ni], Gateway: gw,
			PromptTokens: 50 + rnd.Int64N(4000), CompletionTokens: 10 + rnd.Int64N(2000),
		}
		price := economy.Price{InputPer1M: 150_000, OutputPer1M: 600_000}
		acct := accounts[rnd.IntN(len(accounts))]
		batch.Receipts = append(batch.Receipts, &Receipt{
			RequestID: c.RequestID, Model: c.Model, Consumer: acct, Node: c.Node, Gateway: gw,
			PromptTokens: c.PromptTokens, CompletionTokens: c.CompletionTokens,
			Price: price, CostUcr: economy.Cost(price, c.PromptTokens, c.CompletionTokens),
			TimeMs: 1_760_000_000_000 + rnd.Int64N(3_600_000), Claim: c, NodeMAC: sig(64),
			Grant: &Grant{Account: acct, Gateway: gw, ExpiresMs: 1_760_003_600_000, Sig: sig(64)},
			Hold:  ulid("hold_"), GatewaySig: sig(64),
		})
		batch.Refs = append(batch.Refs, ni)
	}
	for i, n := range nodes {
		batch.Claims = append(batch.Claims, &ClaimBatch{Node: n, Gateway: gw, Hashes: sig(32 * perNode[i]), Sig: sig(64)})
	}
	return batch
}

func reportPerReceipt(b *testing.B) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/codecBenchReceipts, "ns/receipt")
}

func BenchmarkReceiptBatchJSONDecode(b *testing.B) {
	data, err := json.Marshal(newCodecBenchBatch(b))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		var out ReceiptBatch
		if err := json.Unmarshal(data, &out); err != nil {
			b.Fatal(err)
		}
	}
	reportPerReceipt(b)
}

func BenchmarkReceiptBatchJSONEncode(b *testing.B) {
	batch := newCodecBenchBatch(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := json.Marshal(batch); err != nil {
			b.Fatal(err)
		}
	}
	reportPerReceipt(b)
}

func BenchmarkReceiptBatchBinaryDecode(b *testing.B) {
	data, err := newCodecBenchBatch(b).MarshalBinary()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		var out ReceiptBatch
		if err := out.UnmarshalBinary(data); err != nil {
			b.Fatal(err)
		}
	}
	reportPerReceipt(b)
}

func BenchmarkReceiptBatchBinaryEncode(b *testing.B) {
	batch := newCodecBenchBatch(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := batch.MarshalBinary(); err != nil {
			b.Fatal(err)
		}
	}
	reportPerReceipt(b)
}
