package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/nodecore/provider"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
	"golang.org/x/term"
)

func newNodeCmd(g *globals) *cobra.Command {
	var p p2pFlags
	o := launch.NodeOptions{}
	var modelCapacity []string
	var view string
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Serve models from an OpenAI-compatible engine and earn credits",
		Long: `Run a node. It serves the models of an OpenAI-compatible engine (Ollama,
llama.cpp llama-server, vLLM, LM Studio, MLX, a cloud API, or the synthetic
engine) to gateways over libp2p, announces its load on GossipSub, and earns
for the account whose API key it is given.

Prefer TOKENROUTER_ACCOUNT_KEY to --account-key: command lines are visible to
other users of the machine.

On a terminal (--view auto, the default, when stdout is a TTY) the node shows
a live view, redrawn every second: its peer id, connected peers (bootstrap,
settlement, gateways, nodes), each model's calls in flight against its
capacity, calls served and failed, tokens served and tok/s, and the account's
earnings and balance (asked of the settlement peer every 10 s). Its logs then
go to <data>/node.log, as the view says. Elsewhere (systemd, a pipe,
--view off) it logs to stderr as usual. Ctrl-C stops the node either way.
'tokenrouter status --data DIR' asks a running node (or any role) the same.`,
		Example: "  tokenrouter node --data D --bootstrap MADDR --platform ID --upstream http://127.0.0.1:11434/v1 --account-key KEY",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			caps, err := provider.ParseModelCapacity(modelCapacity)
			if err != nil {
				return err
			}
			o.ModelCapacity = caps
			on, err := viewOn(view, term.IsTerminal(int(os.Stdout.Fd())))
			if err != nil {
				return err
			}
			if !on {
				return p.runE(g, func(ctx context.Context, c launch.Common) error {
					o.Common = c
					return launch.Node(ctx, o)
				})(cmd, nil)
			}
			return runNodeWithView(cmd.Context(), g, &p, o)
		},
	}
	p.register(cmd, "node", p2p.DefaultListen)
	f := cmd.Flags()
	f.StringVar(&o.Platform, "platform", "", "peer id of the settlement peer this node trusts (required)")
	f.StringVar(&o.Upstream, "upstream", "http://127.0.0.1:11434/v1", "base URL of the engine's OpenAI-compatible API")
	f.StringVar(&o.UpstreamTokenFile, "upstream-token-file", "", "file holding the bearer token for the engine (cloud APIs)")
	f.StringVar(&o.AccountKey, "account-key", "", "API key of the account this node earns for")
	f.IntVar(&o.Capacity, "capacity", 8, "concurrent calls this node takes per model (the default for every model)")
	f.StringArrayVar(&modelCapacity, "model-capacity", nil,
		"concurrent calls for one model, NAME=N, overriding --capacity (repeatable; e.g. --model-capacity llama3.2=2 --model-capacity Qwen/Qwen2.5-7B-Instruct=16). A full model answers node_full; the others keep serving")
	f.IntVar(&o.MaxInFlight, "max-in-flight", 0,
		"concurrent calls across all models (0 = no cap beyond each model's capacity); for an engine limited as a whole, such as a cloud API key")
	f.StringArrayVar(&o.Models, "model", nil, "serve only this model (repeatable; default: every model the engine lists)")
	f.BoolVar(&o.Synthetic, "synthetic", false, "label this node's engine as the synthetic engine in announcements")
	f.StringVar(&view, "view", "auto", "live view on the terminal: auto (when stdout is a terminal), on or off; with the view, logs go to <data>/node.log")
	return cmd
}

// viewOn resolves --view: auto shows the view when stdout is a terminal.
func viewOn(view string, tty bool) (bool, error) {
	switch view {
	case "auto":
		return tty, nil
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	return false, fmt.Errorf("--view %q: want auto, on or off", view)
}

// The node's live view: what `tokenrouter status` shows of it, redrawn
// every second on the terminal with plain ANSI escapes, while the logs go
// to <data>/node.log. It reads the node's own status socket, so the view
// and `status` cannot disagree.

// NodeLogFile is where a node's logs go while its view is on.
const NodeLogFile = "node.log"

// viewEvery is how often the view is redrawn.
const viewEvery = time.Second

// ANSI escapes the view uses.
const (
	ansiAltScreen  = "\x1b[?1049h" // the terminal's alternate screen: what was on it comes back after
	ansiMainScreen = "\x1b[?1049l"
	ansiHideCursor = "\x1b[?25l"
	ansiShowCursor = "\x1b[?25h"
	ansiClear      = "\x1b[2J"
	ansiHome       = "\x1b[H"
	ansiClearLine  = "\x1b[K" // the rest of the line
	ansiClearBelow = "\x1b[J" // the rest of the screen
)

// runNodeWithView runs the node with its logs in <data>/node.log and the
// live view on stdout, and puts the terminal back as it was when the node
// stops (Ctrl-C).
func runNodeWithView(ctx context.Context, g *globals, p *p2pFlags, o launch.NodeOptions) error {
	if p.data == "" {
		return errors.New("--data is required")
	}
	if err := os.MkdirAll(p.data, 0o700); err != nil {
		return err
	}
	logPath := filepath.Join(p.data, NodeLogFile)
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("node log: %w", err)
	}
	defer logFile.Close()
	recent := &recentLog{}
	log, err := g.loggerTo(logFile, recent)
	if err != nil {
		return err
	}
	o.Common = p.options(log)
	v := &nodeView{out: os.Stdout, dir: p.data, logPath: logPath, recent: recent, width: terminalWidth}
	v.start()
	defer func() {
		if r := recover(); r != nil { // the terminal back first, then the panic on it
			io.WriteString(os.Stdout, ansiShowCursor+ansiMainScreen)
			panic(r)
		}
	}()
	viewCtx, stopView := context.WithCancel(context.Background())
	viewDone := make(chan struct{})
	go func() { defer close(viewDone); v.loop(viewCtx, ctx) }()
	err = launch.Node(ctx, o)
	stopView()
	<-viewDone
	v.stop(err)
	return err
}

// terminalWidth is stdout's width in columns (100 when it has none).
func terminalWidth() int {
	if w, _, err := term.GetSize(int(os.Stdout.Fd())); err == nil && w > 0 {
		return w
	}
	return 100
}

// nodeView draws the node's status on a terminal.
type nodeView struct {
	out     io.Writer
	dir     string
	logPath string
	recent  *recentLog
	width   func() int

	last *launch.Status // the last status read, for the summary at the end
}

func (v *nodeView) start() {
	io.WriteString(v.out, ansiAltScreen+ansiHideCursor+ansiClear)
}

// loop redraws the view every viewEvery until ctx ends; once role ends
// (Ctrl-C) it redraws at once, to show the node stopping.
func (v *nodeView) loop(ctx, role context.Context) {
	t := time.NewTicker(viewEvery)
	defer t.Stop()
	stopping := role.Done()
	for {
		v.draw(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-stopping:
			stopping = nil
		}
	}
}

func (v *nodeView) draw(ctx context.Context) {
	qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	st, err := launch.QueryStatus(qctx, v.dir)
	cancel()
	if ctx.Err() != nil {
		return
	}
	if err == nil {
		v.last = st
	}
	frame := renderNodeView(st, err, nodeViewInfo{
		logPath: v.logPath, recent: v.recent.lines(), pid: os.Getpid(), now: time.Now(), width: v.width(),
	})
	io.WriteString(v.out, ansiHome+frame+ansiClearBelow)
}

// stop puts the terminal back and says how the node ended.
func (v *nodeView) stop(err error) {
	io.WriteString(v.out, ansiShowCursor+ansiMainScreen)
	summary := "tokenrouter node stopped"
	if st := v.last; st != nil && st.Node != nil {
		c := st.Node.Calls
		summary += fmt.Sprintf(": %d calls served, %d failed, %d tokens out", c.Served, c.Failed, c.CompletionTokens)
		if e := st.Node.Earnings; !e.AsOf.IsZero() {
			summary += fmt.Sprintf("; earned %s credits", economy.FormatCredits(e.EarnedUcr))
		}
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		summary += " with an error"
	}
	fmt.Fprintf(v.out, "%s. Logs: %s\n", summary, v.logPath)
	for _, l := range v.recent.lines() {
		fmt.Fprintln(v.out, "  "+l)
	}
}

// nodeViewInfo is what the view shows beside the node's status.
type nodeViewInfo struct {
	logPath string
	recent  []string // the latest warnings and errors logged
	pid     int      // this process: a status from another is a warning
	now     time.Time
	width   int
}

// renderNodeView is one frame of the view: lines ending in ANSI
// clear-to-end-of-line, each cut to the terminal's width. st is nil while
// the node's status socket is not up (err says why).
func renderNodeView(st *launch.Status, err error, in nodeViewInfo) string {
	var lines []string
	add := func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }
	kv := func(k, format string, args ...any) { add("%-10s %s", k, fmt.Sprintf(format, args...)) }
	switch {
	case st == nil:
		add("Token-Router node: starting")
		add("")
		if err != nil && !errors.Is(err, launch.ErrNotRunning) {
			add("status: %v", err)
		} else {
			add("waiting for the node to come up ...")
		}
	case st.Node == nil:
		add("Token-Router %s %s (not a node)", st.Role, st.PeerID)
	default:
		n := st.Node
		add("Token-Router node %s", st.PeerID)
		add("%s, up %s, pid %d", st.State, (time.Duration(st.UptimeS) * time.Second).String(), st.PID)
		if st.PID != in.pid {
			add("WARNING: this status comes from another process (pid %d) using the same data directory", st.PID)
		}
		add("")
		kv("peers", "%s", peersLine(st.Peers))
		up := n.Upstream
		if n.Synthetic {
			up += " (synthetic engine)"
		}
		kv("upstream", "%s", up)
		add("")
		if len(n.Models) == 0 {
			kv("models", "none yet: waiting for the engine to list its models")
		} else {
			name := len("MODEL")
			for _, m := range n.Models {
				name = max(name, len(m.Model))
			}
			add("%-*s  %-22s %8s", name, "MODEL", "IN FLIGHT / CAPACITY", "CALLS")
			for _, m := range n.Models {
				add("%-*s  %-22s %8d", name, m.Model, loadBar(m.InFlight, m.Capacity), m.Calls)
			}
		}
		add("")
		c := n.Calls
		kv("calls", "%d served, %d failed, %d refused at capacity (%d in flight)", c.Served, c.Failed, c.Full, n.InFlight)
		kv("tokens", "%d out, %d in; %.1f tok/s now, %.1f tok/s per call", c.CompletionTokens, c.PromptTokens, n.OutputTokPerS, n.TokPerS)
		kv("earnings", "%s", earningsLine(n.Earnings, in.now))
	}
	if len(in.recent) > 0 {
		add("")
		add("recent warnings:")
		for _, l := range in.recent {
			add("  %s", l)
		}
	}
	add("")
	add("Ctrl-C stops the node. Logs go to %s while this view is on.", in.logPath)
	if st != nil && st.State == "stopping" {
		add("stopping ...")
	}
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(cut(l, in.width-1))
		b.WriteString(ansiClearLine + "\n")
	}
	return b.String()
}

// loadBar is "[###-----]  3/8".
func loadBar(inFlight, capacity int) string {
	const width = 10
	filled := 0
	if capacity > 0 {
		filled = min(width, (inFlight*width+capacity-1)/capacity)
	}
	return fmt.Sprintf("[%s%s] %d/%d", strings.Repeat("#", filled), strings.Repeat("-", width-filled), inFlight, capacity)
}

// earningsLine says what the node's account earned, as last fetched.
func earningsLine(e provider.Earnings, now time.Time) string {
	if e.AsOf.IsZero() {
		if e.Error != "" {
			return "unknown: " + e.Error
		}
		return "asking the settlement peer ..."
	}
	s := fmt.Sprintf("%s credits earned, balance %s (account %s, %s ago)",
		economy.FormatCredits(e.EarnedUcr), economy.FormatCredits(e.BalanceUcr), e.Account, now.Sub(e.AsOf).Round(time.Second))
	if e.Error != "" {
		s += "; the last update failed: " + e.Error
	}
	return s
}

// cut shortens s to at most n runes.
func cut(s string, n int) string {
	if n <= 0 || utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n])
}

// recentLog keeps the last few warnings and errors logged, for the view.
type recentLog struct {
	mu  sync.Mutex
	buf []string
}

// recentLines is how many warnings the view shows.
const recentLines = 4

func (r *recentLog) add(line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf = append(r.buf, line)
	if len(r.buf) > recentLines {
		r.buf = append(r.buf[:0:0], r.buf[len(r.buf)-recentLines:]...)
	}
}

func (r *recentLog) lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.buf)
}

// recentHandler passes every record on and keeps warnings and errors in
// a recentLog.
type recentHandler struct {
	slog.Handler
	recent *recentLog
}

func (h recentHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s %s", r.Time.Format("15:04:05"), r.Level, r.Message)
		r.Attrs(func(a slog.Attr) bool {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			return true
		})
		h.recent.add(b.String())
	}
	return h.Handler.Handle(ctx, r)
}

func (h recentHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return recentHandler{h.Handler.WithAttrs(as), h.recent}
}

func (h recentHandler) WithGroup(name string) slog.Handler {
	return recentHandler{h.Handler.WithGroup(name), h.recent}
}

// loggerTo is the process logger (--log-level, --log-format) writing to w,
// keeping its warnings in recent.
func (g *globals) loggerTo(w io.Writer, recent *recentLog) (*slog.Logger, error) {
	if _, err := g.logger(); err != nil { // checks the flags
		return nil, err
	}
	var level slog.Level
	level.UnmarshalText([]byte(g.logLevel))
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if g.logFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(recentHandler{h, recent}), nil
}
