// Command pathbench measures what the gateway path costs, in one run on one
// synthetic engine (`tokenrouter engine --rate 0`, a real process):
//
//   - direct: the client calls the engine;
//   - two-hop: the client calls the engine through two plain
//     httputil.ReverseProxy hops, each its own process (the floor for any
//     two-hop path);
//   - gateway: the client calls a gateway process, which forwards over
//     libp2p to a node process serving from that same engine, with a
//     bootstrap and a settlement peer as real processes too, an account
//     with credit, receipts journaled and settled.
//
// Rounds alternate the three (the order rotates each round) so that a noisy
// machine's drift hits them alike; the report gives medians and ranges over
// rounds. Every call must answer 200 in full, or the run fails.
//
// Run it with `make bench`, or:
//
//	make build && go run ./internal/pathbench -bin bin/tokenrouter -md /tmp/path.md -profile /tmp/prof
//
// It is a main package with no tests, so `go test ./...` never runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// model is the synthetic model every path serves.
const model = "synthetic-1"

// nodeCapacity is the node's declared capacity: well above the benchmark's
// concurrency, so the node never turns a call away.
const nodeCapacity = 64

// pricesJSON prices calls at a hundredth of the default table: every call
// still costs at least 1 µcr (so it is billed, journaled and settled), and
// the starting 5 credits last millions of calls.
const pricesJSON = `{"default":{"input":10000,"output":20000}}`

type options struct {
	bin            string
	dir            string
	rounds         int
	conc           int
	duration       time.Duration
	latDuration    time.Duration
	maxTokens      int
	streamTokens   int
	streamDuration time.Duration
	profile        bool
	profileDir     string
	profileFor     time.Duration
	md             string
	keep           bool
	hold           bool
	maxOther       float64
}

func main() {
	var o options
	hop := flag.String("hop", "", "internal: run one reverse-proxy hop to this URL")
	flag.StringVar(&o.bin, "bin", "bin/tokenrouter", "the tokenrouter binary (make build)")
	flag.IntVar(&o.rounds, "rounds", 5, "rounds; each measures every path once, in a rotating order")
	flag.IntVar(&o.conc, "conc", 16, "concurrent clients for the throughput runs")
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "length of each throughput run")
	flag.DurationVar(&o.latDuration, "lat-duration", 2*time.Second, "length of each one-client latency run")
	flag.IntVar(&o.maxTokens, "max-tokens", 16, "max_tokens of the non-streamed calls")
	flag.IntVar(&o.streamTokens, "stream-tokens", 2000, "max_tokens of each streamed completion")
	// Streaming rounds of 2 s swung ±20% around their median on this
	// 2-core machine (a few dozen streams each); 5 s rounds, ±10%.
	flag.DurationVar(&o.streamDuration, "stream-duration", 5*time.Second, "length of each streaming run")
	flag.StringVar(&o.profileDir, "profile", "", "write CPU profiles of the gateway and the node to this directory (after the measured rounds)")
	flag.DurationVar(&o.profileFor, "profile-for", 10*time.Second, "length of each profile")
	flag.StringVar(&o.md, "md", "", "also write the results as markdown to this file")
	flag.Float64Var(&o.maxOther, "max-other", 0.3, "measure a round again when other processes used more than this many cores during it")
	flag.BoolVar(&o.keep, "keep", false, "keep the processes' data directories and logs")
	flag.BoolVar(&o.hold, "hold", false, "start everything, print where it listens and wait for ^C instead of measuring (to look around by hand)")
	flag.Parse()
	if *hop != "" {
		if err := runHop(*hop); err != nil {
			fmt.Fprintln(os.Stderr, "hop:", err)
			os.Exit(1)
		}
		return
	}
	o.profile = o.profileDir != ""
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "pathbench:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if _, err := os.Stat(o.bin); err != nil {
		return fmt.Errorf("%s: %w (run make build first)", o.bin, err)
	}
	dir, err := os.MkdirTemp("", "pathbench")
	if err != nil {
		return err
	}
	o.dir = dir
	if o.keep {
		fmt.Println("data and logs in", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	fmt.Println("starting engine, two hops, bootstrap, settle, node and gateway...")
	s, err := startAll(o)
	if err != nil {
		return err
	}
	defer s.ps.stop()
	if o.hold {
		fmt.Printf("engine %s\ntwo-hop %s\ngateway %s\nsettle %s\nkey %s\npprof %v\n^C to stop\n",
			s.engineURL, s.twoHopURL, s.gwURL, s.settleURL, s.key, s.pprof)
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		<-ctx.Done()
		return nil
	}
	before, err := s.account()
	if err != nil {
		return err
	}
	b := &bench{o: o, s: s, targets: []*target{
		newTarget("direct", s.engineURL, s.key),
		newTarget("two-hop", s.twoHopURL, s.key),
		newTarget("gateway", s.gwURL, s.key),
	}}
	if err := b.measure(); err != nil {
		return err
	}
	if o.profile {
		if err := b.profile(); err != nil {
			return err
		}
	}
	if err := b.checkBilling(before); err != nil {
		return err
	}
	report := b.report()
	fmt.Print(report)
	if o.md != "" {
		if err := os.WriteFile(o.md, []byte(report), 0o644); err != nil {
			return err
		}
		fmt.Println("markdown written to", o.md)
	}
	return nil
}
