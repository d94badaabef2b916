package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

func newStatusCmd(g *globals) *cobra.Command {
	var data string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what a running node, gateway, settlement or bootstrap peer is doing",
		Long: `Ask a running role what it is doing, by its data directory: role, peer id,
uptime, addresses, connected peers, and the role's own facts (node: models
with calls in flight and capacity, calls served and failed, tokens, tok/s
and the account's earnings; gateway: HTTP address, the instances it can
route to per model, calls; settle: accounts, receipts, the ledger's head;
bootstrap: peers). --json prints the same as JSON. It never shows a secret.

Every long-running role answers on a unix socket in its data directory,
<data>/status.sock (mode 0600: only the user running it may ask), which it
removes when it stops. If no role runs there, status says so and exits
non-zero. When DIR holds no socket but its subdirectories do (a dev mesh's
data directory, or ~/.tokenrouter with a role per subdirectory), each of
them is shown; --json then prints a list.`,
		Example: "  tokenrouter status --data ~/.tokenrouter/node\n  tokenrouter status --data ~/.tokenrouter/dev\n  tokenrouter status --data D --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			return runStatus(ctx, cmd.OutOrStdout(), data, asJSON)
		},
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "."
	}
	f := cmd.Flags()
	f.StringVar(&data, "data", filepath.Join(home, ".tokenrouter"), "data directory of the role to ask (or a directory holding several)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// runStatus prints the status of the role running with data directory
// dir, or of those running in its subdirectories when it has none itself.
func runStatus(ctx context.Context, w io.Writer, dir string, asJSON bool) error {
	dirs := statusDirs(dir)
	if dirs == nil {
		st, err := launch.QueryStatus(ctx, dir)
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(w, st)
		}
		writeStatus(w, st)
		return nil
	}
	var all []*launch.Status
	var errs []error
	for _, d := range dirs {
		st, err := launch.QueryStatus(ctx, d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		all = append(all, st)
	}
	if len(all) == 0 {
		return &launch.NotRunningError{Dir: dir, Why: "nothing answers on the status sockets below it, in " + strings.Join(dirs, ", ")}
	}
	if asJSON {
		return writeJSON(w, all)
	}
	for i, st := range all {
		if i > 0 {
			fmt.Fprintln(w)
		}
		writeStatus(w, st)
	}
	for _, err := range errs {
		fmt.Fprintf(w, "\n%v\n", err)
	}
	return nil
}

// statusDirs is nil when dir has a status socket of its own (or nothing
// below it has one), else the directories one or two levels below with one.
func statusDirs(dir string) []string {
	if _, err := os.Lstat(filepath.Join(dir, launch.StatusSocket)); err == nil {
		return nil
	}
	var out []string
	for _, pattern := range []string{"*", filepath.Join("*", "*")} {
		m, _ := filepath.Glob(filepath.Join(dir, pattern, launch.StatusSocket))
		for _, sock := range m {
			out = append(out, filepath.Dir(sock))
		}
	}
	slices.Sort(out)
	return out
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeStatus prints st for people.
func writeStatus(w io.Writer, st *launch.Status) {
	fmt.Fprintf(w, "%s %s: %s, up %s (pid %d)\n", st.Role, st.PeerID, st.State, (time.Duration(st.UptimeS) * time.Second).String(), st.PID)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "  %s\t%s\n", k, fmt.Sprintf(format, args...)) }
	row("data", "%s", st.Data)
	for i, a := range st.Addrs {
		row(map[bool]string{true: "addrs", false: ""}[i == 0], "%s", a)
	}
	if st.HTTPAddr != "" {
		row("http", "%s", st.HTTPAddr)
	}
	row("peers", "%s", peersLine(st.Peers))
	switch {
	case st.Node != nil:
		n := st.Node
		up := n.Upstream
		if n.Synthetic {
			up += " (synthetic engine)"
		}
		row("upstream", "%s", up)
		for i, m := range n.Models {
			row(map[bool]string{true: "models", false: ""}[i == 0], "%s  %d/%d in flight, %d calls", m.Model, m.InFlight, m.Capacity, m.Calls)
		}
		if len(n.Models) == 0 {
			row("models", "none yet (waiting for the engine)")
		}
		c := n.Calls
		row("calls", "%d served, %d failed (%d total; %d refused full, %d rejected, %d dropped)", c.Served, c.Failed, c.Total, c.Full, c.Rejected, c.Dropped)
		row("tokens", "%d out, %d in; %.1f tok/s now (last 10 s), %.1f tok/s per call", c.CompletionTokens, c.PromptTokens, n.OutputTokPerS, n.TokPerS)
		row("earnings", "%s", earningsLine(n.Earnings, time.Now()))
	case st.Gateway != nil:
		gw := st.Gateway
		for i, m := range gw.Models {
			row(map[bool]string{true: "models", false: ""}[i == 0], "%s  %d routable of %d instances (%d candidates now), %d in flight", m.Model, m.Routable, m.Instances, m.Candidates, m.InFlight)
		}
		if len(gw.Models) == 0 {
			row("models", "no live instance known")
		}
		c := gw.Calls
		row("calls", "%d total: %d ok, %d client errors, %d failed; %d in flight", c.Total, c.OK, c.ClientError, c.Failed, gw.InFlight)
		row("billed", "%d prompt + %d completion tokens, %s credits", gw.PromptTokens, gw.CompletionTokens, economy.FormatCredits(gw.ChargedUcr))
		row("receipts", "%s; %d pending", countsLine(gw.Receipts), gw.ReceiptsPending)
	case st.Settle != nil:
		s := st.Settle
		row("accounts", "%d (%d created since start)", s.Accounts, s.AccountsCreated)
		row("receipts", "%s", countsLine(s.Receipts))
		row("claims", "%s", countsLine(s.Claims))
		row("charged", "%s credits since start", economy.FormatCredits(s.ChargedUcr))
		if s.Ledger.Seq == 0 {
			row("ledger", "empty")
		} else {
			row("ledger", "head #%d %s, %s ago", s.Ledger.Seq, s.Ledger.Hash, time.Since(s.Ledger.Time).Round(time.Second))
		}
		for i, m := range s.Models {
			row(map[bool]string{true: "supply", false: ""}[i == 0], "%s  %d instances, capacity %d, %d in flight", m.Model, m.Instances, m.Capacity, m.InFlight)
		}
	case st.Bootstrap != nil:
		row("known", "%d peers", st.Bootstrap.KnownPeers)
	}
	tw.Flush()
}

// peersLine is "7 connected: 1 bootstrap, 1 settlement, 2 gateways, 3 nodes; 12 members".
func peersLine(p launch.PeerStats) string {
	var parts []string
	for _, k := range []struct {
		n            int
		one, several string
	}{
		{p.Bootstrap, "bootstrap", "bootstrap"}, {p.Settlement, "settlement", "settlement"},
		{p.Gateways, "gateway", "gateways"}, {p.Nodes, "node", "nodes"}, {p.Other, "other", "other"},
	} {
		switch {
		case k.n == 1:
			parts = append(parts, "1 "+k.one)
		case k.n > 1:
			parts = append(parts, fmt.Sprintf("%d %s", k.n, k.several))
		}
	}
	s := fmt.Sprintf("%d connected", p.Connected)
	if len(parts) > 0 {
		s += ": " + strings.Join(parts, ", ")
	}
	if p.Members > 0 {
		s += fmt.Sprintf("; %d live members", p.Members)
	}
	return s
}

// countsLine is "applied 9, duplicate 1" (sorted), or "none".
func countsLine(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k, v := range m {
		if v != 0 {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return "none"
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
