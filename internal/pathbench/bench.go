package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
)

const (
	direct = iota
	twoHop
	gateway
)

// bench holds one run's measurements, per target and round.
type bench struct {
	o       options
	s       *setup
	targets []*target
	loaded  [3][]loadResult   // o.conc clients
	single  [3][]loadResult   // one client
	streams [3][]streamResult // back-to-back streams
	other   []float64         // cores other processes used during each round
}

// orders rotates which path goes first, so drift over a round hits each alike.
var orders = [][]int{{direct, twoHop, gateway}, {twoHop, gateway, direct}, {gateway, direct, twoHop}}

func (b *bench) measure() error {
	o := b.o
	fmt.Println("warming up...")
	for _, t := range b.targets {
		if _, err := t.load(o.conc, time.Second, chatBody(o.maxTokens, false)); err != nil {
			return err
		}
		if _, err := t.streams(o.streamTokens, 0); err != nil {
			return err
		}
	}
	body := chatBody(o.maxTokens, false)
	for attempt := 0; len(b.other) < o.rounds; attempt++ {
		if attempt >= 3*o.rounds {
			return fmt.Errorf("%d rounds out of %d were disturbed by other processes (over %.2f cores); the machine is too busy to measure",
				attempt-len(b.other), attempt, o.maxOther)
		}
		r := len(b.other)
		order := orders[attempt%len(orders)]
		var (
			loaded, single [3]loadResult
			streams        [3]streamResult
		)
		before := b.s.sampleCPU()
		for _, i := range order {
			res, err := b.targets[i].load(o.conc, o.duration, body)
			if err != nil {
				return err
			}
			loaded[i] = res
		}
		for _, i := range order {
			res, err := b.targets[i].load(1, o.latDuration, body)
			if err != nil {
				return err
			}
			single[i] = res
		}
		for _, i := range order {
			res, err := b.targets[i].streams(o.streamTokens, o.streamDuration)
			if err != nil {
				return err
			}
			streams[i] = res
		}
		other := otherCores(before, b.s.sampleCPU())
		if other > o.maxOther {
			fmt.Printf("round %d disturbed: other processes used %.2f cores; measuring it again shortly\n", r+1, other)
			time.Sleep(5 * time.Second)
			continue
		}
		for i := range 3 {
			b.loaded[i] = append(b.loaded[i], loaded[i])
			b.single[i] = append(b.single[i], single[i])
			b.streams[i] = append(b.streams[i], streams[i])
		}
		b.other = append(b.other, other)
		fmt.Printf("round %d/%d (other processes %.2f cores): req/s direct %.0f, two-hop %.0f, gateway %.0f; 1-client p50 %s / %s / %s; stream tok/s %.0f / %.0f / %.0f (with setup %.0f / %.0f / %.0f)\n",
			r+1, o.rounds, other, b.loaded[direct][r].rps(), b.loaded[twoHop][r].rps(), b.loaded[gateway][r].rps(),
			ms(b.single[direct][r].pct(0.5)), ms(b.single[twoHop][r].pct(0.5)), ms(b.single[gateway][r].pct(0.5)),
			b.streams[direct][r].tokPerS(), b.streams[twoHop][r].tokPerS(), b.streams[gateway][r].tokPerS(),
			b.streams[direct][r].tokPerSAll(), b.streams[twoHop][r].tokPerSAll(), b.streams[gateway][r].tokPerSAll())
	}
	return nil
}

// profile takes CPU profiles of the gateway and the node under the
// throughput load, then under back-to-back streams. It runs after the
// measured rounds: profiling costs CPU the figures should not pay.
func (b *bench) profile() error {
	o := b.o
	if err := os.MkdirAll(o.profileDir, 0o755); err != nil {
		return err
	}
	gw := b.targets[gateway]
	for _, phase := range []string{"calls", "stream"} {
		fmt.Printf("profiling the gateway and the node under %s for %s...\n", phase, o.profileFor)
		var wg sync.WaitGroup
		errs := make(chan error, 3)
		for role, addr := range b.s.pprof {
			wg.Go(func() {
				errs <- fetchProfile(addr, o.profileFor, filepath.Join(o.profileDir, role+"-"+phase+".pprof"))
			})
		}
		wg.Go(func() {
			time.Sleep(200 * time.Millisecond) // the profiles start first
			var err error
			if phase == "calls" {
				_, err = gw.load(o.conc, o.profileFor-400*time.Millisecond, chatBody(o.maxTokens, false))
			} else {
				_, err = gw.streams(o.streamTokens, o.profileFor-400*time.Millisecond)
			}
			errs <- err
		})
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				return err
			}
		}
	}
	fmt.Printf("profiles in %s; read them with: go tool pprof -top %s\n", o.profileDir, o.bin)
	return nil
}

func fetchProfile(addr string, d time.Duration, path string) error {
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(d.Seconds())))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile from %s: %s", addr, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// checkBilling waits until settlement has billed every call the gateway
// answered: the benchmark's calls are paid calls, receipts and all.
func (b *bench) checkBilling(before account) error {
	want := b.targets[gateway].calls.Load()
	deadline := time.Now().Add(60 * time.Second)
	for {
		a, err := b.s.account()
		if err != nil {
			return err
		}
		got := a.Calls - before.Calls
		if got == want {
			fmt.Printf("settlement billed all %d gateway calls (%d µcr; %d µcr left)\n", got, a.SpentUcr-before.SpentUcr, a.BalanceUcr)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("settlement billed %d of the gateway's %d calls after a minute", got, want)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// spread is a median and the range over rounds.
func spread(xs []float64) (med, lo, hi float64) {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	med = s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return med, s[0], s[n-1]
}

func per[T any](rs []T, f func(T) float64) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = f(r)
	}
	return out
}

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (b *bench) report() string {
	o := b.o
	var w strings.Builder
	names := []string{"direct (engine)", "two-hop floor (2× httputil.ReverseProxy)", "gateway → libp2p → node"}
	fmt.Fprintf(&w, "\n- Command: `make bench` (`go run ./internal/pathbench -bin %s -rounds %d -conc %d -duration %s -lat-duration %s -max-tokens %d -stream-tokens %d -stream-duration %s`)\n",
		o.bin, o.rounds, o.conc, o.duration, o.latDuration, o.maxTokens, o.streamTokens, o.streamDuration)
	fmt.Fprintf(&w, "- Machine: %d CPU, %s, %s\n", runtime.NumCPU(), cpuModel(), runtime.Version())
	fmt.Fprintf(&w, "- Date: %s\n", time.Now().Format("2006-01-02"))
	om, olo, ohi := spread(b.other)
	fmt.Fprintf(&w, "- Other processes on the machine used %.2f cores during a round (median; %.2f–%.2f); rounds over %.2f were measured again\n\n",
		om, olo, ohi, o.maxOther)
	fmt.Fprintf(&w, "Medians over %d rounds, range in brackets. Throughput: %d closed-loop clients, non-streamed chat, max_tokens %d, %s per run. "+
		"Latency: one client, %s per run. Streams: one client, back-to-back streamed chats of %d tokens for %s, content chunks counted at the client: "+
		"tok/s while they flow (each stream's first to last content chunk), then with each stream's setup and end counted in, and the median time to the first token.\n\n",
		o.rounds, o.conc, o.maxTokens, o.duration, o.latDuration, o.streamTokens, o.streamDuration)
	fmt.Fprintf(&w, "| path | req/s (%d clients) | p50 / p99 (%d clients) | p50 / p99 (1 client) | streamed tok/s | tok/s with setup | first token |\n|---|---|---|---|---|---|---|\n", o.conc, o.conc)
	for i := range b.targets {
		rps, rlo, rhi := spread(per(b.loaded[i], loadResult.rps))
		p50, _, _ := spread(per(b.loaded[i], func(r loadResult) float64 { return msOf(r.pct(0.5)) }))
		p99, _, _ := spread(per(b.loaded[i], func(r loadResult) float64 { return msOf(r.pct(0.99)) }))
		s50, _, _ := spread(per(b.single[i], func(r loadResult) float64 { return msOf(r.pct(0.5)) }))
		s99, _, _ := spread(per(b.single[i], func(r loadResult) float64 { return msOf(r.pct(0.99)) }))
		tok, tlo, thi := spread(per(b.streams[i], streamResult.tokPerS))
		all, alo, ahi := spread(per(b.streams[i], streamResult.tokPerSAll))
		ttft, _, _ := spread(per(b.streams[i], func(r streamResult) float64 { return msOf(r.ttftMedian()) }))
		fmt.Fprintf(&w, "| %s | %.0f (%.0f–%.0f) | %.2f / %.2f ms | %.3f / %.3f ms | %.0f (%.0f–%.0f) | %.0f (%.0f–%.0f) | %.2f ms |\n",
			names[i], rps, rlo, rhi, p50, p99, s50, s99, tok, tlo, thi, all, alo, ahi, ttft)
	}
	ratio := make([]float64, o.rounds)
	added := make([]float64, o.rounds)
	addedLoaded := make([]float64, o.rounds)
	tokRatio := make([]float64, o.rounds)
	allRatio := make([]float64, o.rounds)
	for r := range o.rounds {
		ratio[r] = b.loaded[gateway][r].rps() / b.loaded[twoHop][r].rps()
		added[r] = msOf(b.single[gateway][r].pct(0.5) - b.single[direct][r].pct(0.5))
		addedLoaded[r] = msOf(b.loaded[gateway][r].pct(0.5) - b.loaded[direct][r].pct(0.5))
		tokRatio[r] = b.streams[gateway][r].tokPerS() / b.streams[direct][r].tokPerS()
		allRatio[r] = b.streams[gateway][r].tokPerSAll() / b.streams[direct][r].tokPerSAll()
	}
	pass := func(ok bool) string {
		if ok {
			return "**met**"
		}
		return "**not met**"
	}
	m, lo, hi := spread(ratio)
	fmt.Fprintf(&w, "\n| target | measured (median, range over rounds) | |\n|---|---|---|\n")
	fmt.Fprintf(&w, "| gateway req/s ≥ 0.9× two-hop floor | %.2f× (%.2f–%.2f) | %s |\n", m, lo, hi, pass(m >= 0.9))
	m, lo, hi = spread(added)
	fmt.Fprintf(&w, "| added p50 ≤ 1 ms over direct (1 client) | %+.3f ms (%+.3f – %+.3f) | %s |\n", m, lo, hi, pass(m <= 1))
	m2, lo2, hi2 := spread(addedLoaded)
	fmt.Fprintf(&w, "| (added p50 at %d clients, for reference) | %+.2f ms (%+.2f – %+.2f) | |\n", o.conc, m2, lo2, hi2)
	m, lo, hi = spread(tokRatio)
	fmt.Fprintf(&w, "| streamed tok/s ≥ 95%% of direct | %.0f%% (%.0f–%.0f%%) | %s |\n", 100*m, 100*lo, 100*hi, pass(m >= 0.95))
	m, lo, hi = spread(allRatio)
	fmt.Fprintf(&w, "| (the same with each stream's setup and end counted in) | %.0f%% (%.0f–%.0f%%) | |\n", 100*m, 100*lo, 100*hi)
	return w.String()
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}
