package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
	"github.com/tokenrouter/tokenrouter/nodecore/provider"
)

// statusOf runs `tokenrouter status` with args and returns what it printed
// (stdout and stderr) and its exit error.
func statusOf(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(binary, append([]string{"status"}, args...)...).CombinedOutput()
	return string(out), err
}

// statusJSON is `tokenrouter status --data dir --json`, decoded.
func statusJSON(t *testing.T, dir string, secrets ...string) *launch.Status {
	t.Helper()
	out, err := statusOf(t, "--data", dir, "--json")
	if err != nil {
		t.Fatalf("status --data %s: %v\n%s", dir, err, out)
	}
	noSecrets(t, out, secrets...)
	var st launch.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json is not a status: %v\n%s", err, out)
	}
	return &st
}

func noSecrets(t *testing.T, out string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Fatalf("status shows a secret (%.8s...):\n%s", s, out)
		}
	}
}

// checkCommon checks what every role's status says of itself, and its socket.
func checkCommon(t *testing.T, st *launch.Status, dir, role string) {
	t.Helper()
	id, err := launch.ReadFirstLine(filepath.Join(dir, "peer-id"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Role != role || st.PeerID != id || st.State != "ready" || st.PID <= 0 || len(st.Addrs) == 0 {
		t.Fatalf("%s status: role %q peer %q (want %q) state %q pid %d addrs %v", role, st.Role, st.PeerID, id, st.State, st.PID, st.Addrs)
	}
	if !strings.HasSuffix(st.Addrs[0], "/p2p/"+id) || st.Peers.Connected < 1 {
		t.Fatalf("%s status: addrs %v, peers %+v", role, st.Addrs, st.Peers)
	}
	fi, err := os.Lstat(filepath.Join(dir, launch.StatusSocket))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s status socket mode %v, want a socket 0600", role, fi.Mode())
	}
}

// A real mesh, one paid call, then `status` asks each role what it is doing.
func TestStatusOfEveryRole(t *testing.T) {
	m := startProcMesh(t, meshSpec{nodes: 1, capacity: 4})
	if r := m.call(chat(9, false)); r.status != 200 {
		t.Fatalf("paid call: %d %s", r.status, r.body)
	}
	secrets := []string{m.operatorKey, m.consumerKey}
	// The call is settled (the operator earned) before the node first asks.
	var earned int64
	testkit.WaitFor(t, 5*time.Second, "the call to settle", func() bool {
		var a struct {
			EarnedUcr int64 `json:"earned_ucr"`
		}
		json.Unmarshal(getJSON(t, m.settleURL+"/v1/account", m.operatorKey), &a)
		earned = a.EarnedUcr
		return earned > 0
	})

	ndir := m.dir("node-0")
	// The status answer waits 1.5 s at most for the node's first earnings
	// lookup; on a busy machine it may come in a later answer.
	var st *launch.Status
	testkit.WaitFor(t, 15*time.Second, "the node's status to hold its earnings", func() bool {
		st = statusJSON(t, ndir, secrets...)
		return st.Node != nil && !st.Node.Earnings.AsOf.IsZero()
	})
	checkCommon(t, st, ndir, "node")
	n := st.Node
	if n == nil || len(n.Models) != 1 || n.Models[0].Model != "synthetic-1" || n.Models[0].Capacity != 4 {
		t.Fatalf("node status models: %+v", n)
	}
	if n.Calls.Served < 1 || n.Models[0].Calls < 1 || n.Calls.CompletionTokens < 1 || n.Calls.Failed != 0 {
		t.Fatalf("node status calls: %+v", n.Calls)
	}
	if n.Earnings.EarnedUcr != earned || n.Earnings.Account == "" || n.Earnings.Error != "" || n.Earnings.AsOf.IsZero() {
		t.Fatalf("node status earnings %+v, want %d µcr earned", n.Earnings, earned)
	}
	if st.Peers.Settlement != 1 || st.Peers.Bootstrap != 1 || st.Peers.Gateways != 1 {
		t.Fatalf("node status peers: %+v", st.Peers)
	}
	// Without a terminal the node logs to stderr as it always did.
	if !strings.Contains(m.nodes[0].out.String(), "node serving") {
		t.Fatalf("the node's logs are not on its stderr:\n%s", m.nodes[0].out.String())
	}
	if _, err := os.Stat(filepath.Join(ndir, NodeLogFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a node without a terminal wrote %s: %v", NodeLogFile, err)
	}
	text, err := statusOf(t, "--data", ndir)
	if err != nil || !strings.Contains(text, "node "+st.PeerID) || !strings.Contains(text, "1 served") {
		t.Fatalf("status text: %v\n%s", err, text)
	}
	noSecrets(t, text, secrets...)

	gdir := m.dir("gw")
	st = statusJSON(t, gdir, secrets...)
	checkCommon(t, st, gdir, "gateway")
	if "http://"+st.HTTPAddr != m.gwURL || st.Gateway == nil || st.Gateway.Calls.OK < 1 ||
		len(st.Gateway.Models) != 1 || st.Gateway.Models[0].Routable != 1 || st.Peers.Nodes != 1 {
		t.Fatalf("gateway status: http %q, %+v, peers %+v", st.HTTPAddr, st.Gateway, st.Peers)
	}

	sdir := m.dir("settle")
	st = statusJSON(t, sdir, secrets...)
	checkCommon(t, st, sdir, "settle")
	if "http://"+st.HTTPAddr != m.settleURL || st.Settle == nil || st.Settle.Accounts < 2 ||
		st.Settle.Receipts["applied"] < 1 || st.Settle.Ledger.Seq == 0 || len(st.Settle.Ledger.Hash) != 64 {
		t.Fatalf("settle status: http %q, %+v", st.HTTPAddr, st.Settle)
	}

	bdir := m.dir("boot")
	st = statusJSON(t, bdir, secrets...)
	checkCommon(t, st, bdir, "bootstrap")
	if st.Bootstrap == nil || st.Peers.Connected < 3 {
		t.Fatalf("bootstrap status: %+v, peers %+v", st.Bootstrap, st.Peers)
	}

	// A directory of role directories: each one that runs.
	all, err := statusOf(t, "--data", m.root, "--json")
	if err != nil {
		t.Fatalf("status of the mesh's root: %v\n%s", err, all)
	}
	var list []launch.Status
	if err := json.Unmarshal([]byte(all), &list); err != nil || len(list) != 4 {
		t.Fatalf("status of the mesh's root: %v, %d roles\n%s", err, len(list), all)
	}
	noSecrets(t, all, secrets...)
}

// No role running: status says so and fails; a socket left by kill -9 is
// taken for what it is, and replaced when the role starts again; a clean
// stop removes the socket.
func TestStatusNotRunning(t *testing.T) {
	empty := t.TempDir()
	out, err := statusOf(t, "--data", empty)
	if err == nil || !strings.Contains(out, "no tokenrouter role is running with data directory "+empty) {
		t.Fatalf("status of an empty directory: %v\n%s", err, out)
	}
	if out, err := statusOf(t, "--data", filepath.Join(empty, "nowhere")); err == nil || !strings.Contains(out, "does not exist") {
		t.Fatalf("status of a missing directory: %v\n%s", err, out)
	}

	dir := t.TempDir()
	lo := "/ip4/127.0.0.1/tcp/0"
	boot := start(t, "bootstrap", nil, "bootstrap", "--data", dir, "--listen", lo)
	waitFile(t, boot, filepath.Join(dir, "ready"))
	statusJSON(t, dir)
	boot.stop(syscall.SIGKILL)
	out, err = statusOf(t, "--data", dir)
	if err == nil || !strings.Contains(out, "did not stop cleanly") {
		t.Fatalf("status after kill -9: %v\n%s", err, out)
	}

	// The killed one's ready file is still there: wait for the new one to answer.
	boot = start(t, "bootstrap-again", nil, "bootstrap", "--data", dir, "--listen", lo)
	testkit.WaitFor(t, 20*time.Second, "the restarted bootstrap to answer", func() bool {
		_, err := statusOf(t, "--data", dir)
		return err == nil
	})
	st := statusJSON(t, dir)
	if st.PID != boot.cmd.Process.Pid {
		t.Fatalf("status answered by pid %d, want the new bootstrap's %d", st.PID, boot.cmd.Process.Pid)
	}
	fi, err := os.Lstat(filepath.Join(dir, launch.StatusSocket))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the replaced socket: %v %v", fi, err)
	}
	boot.stop(syscall.SIGTERM)
	if _, err := os.Lstat(filepath.Join(dir, launch.StatusSocket)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the socket outlived a clean stop: %v", err)
	}
	if out, err := statusOf(t, "--data", dir); err == nil || !strings.Contains(out, "no tokenrouter role is running") {
		t.Fatalf("status after a clean stop: %v\n%s", err, out)
	}
}

// One frame of the node's view, from a status snapshot.
func TestNodeViewRender(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := &launch.Status{
		Role: "node", PeerID: "12D3KooWExample", PID: 42, State: "ready", UptimeS: 192,
		Peers: launch.PeerStats{Connected: 5, Bootstrap: 1, Settlement: 1, Gateways: 2, Nodes: 1, Members: 6},
		Node: &provider.Stats{
			Upstream: "http://127.0.0.1:11434/v1", Synthetic: true, InFlight: 3,
			Models: []provider.ModelStats{
				{Model: "llama3.2", InFlight: 3, Capacity: 8, Calls: 120},
				{Model: "qwen2.5-coder-7b-instruct", InFlight: 0, Capacity: 2, Calls: 7},
			},
			Calls:   provider.CallStats{Total: 131, Served: 127, Failed: 1, Full: 3, PromptTokens: 1200, CompletionTokens: 45678},
			TokPerS: 55.12, OutputTokPerS: 42,
			Earnings: provider.Earnings{Account: "acct_1", EarnedUcr: 123456, BalanceUcr: 5123456, AsOf: now.Add(-4 * time.Second)},
		},
	}
	info := nodeViewInfo{logPath: "/d/node.log", pid: 42, now: now, width: 200, recent: []string{"03:04:01 WARN engine refused a call status=401"}}
	frame := renderNodeView(st, nil, info)
	for _, want := range []string{
		"Token-Router node 12D3KooWExample", "ready, up 3m12s",
		"5 connected: 1 bootstrap, 1 settlement, 2 gateways, 1 node; 6 live members",
		"(synthetic engine)",
		"llama3.2                   [####------] 3/8", "qwen2.5-coder-7b-instruct  [----------] 0/2",
		"127 served, 1 failed, 3 refused at capacity (3 in flight)",
		"45678 out, 1200 in; 42.0 tok/s now, 55.1 tok/s per call",
		"0.123456 credits earned, balance 5.123456 (account acct_1, 4s ago)",
		"WARN engine refused a call", "Logs go to /d/node.log", "Ctrl-C stops the node",
	} {
		if !strings.Contains(frame, want) {
			t.Errorf("the frame lacks %q:\n%s", want, frame)
		}
	}
	for _, l := range strings.Split(strings.TrimSuffix(frame, "\n"), "\n") {
		if !strings.HasSuffix(l, ansiClearLine) {
			t.Fatalf("line %q does not clear the rest of the old one", l)
		}
	}
	if strings.Contains(frame, "another process") {
		t.Fatalf("a status from this process is taken for another's:\n%s", frame)
	}

	// Narrow terminals cut lines rather than wrap them.
	info.width = 20
	for _, l := range strings.Split(strings.TrimSuffix(renderNodeView(st, nil, info), "\n"), "\n") {
		if n := len([]rune(strings.TrimSuffix(l, ansiClearLine))); n > 19 {
			t.Fatalf("line %q is %d wide on a 20-column terminal", l, n)
		}
	}
	// Before the node answers, and when another process answers.
	info.width = 200
	if f := renderNodeView(nil, &launch.NotRunningError{Dir: "/d"}, info); !strings.Contains(f, "starting") {
		t.Fatalf("the frame before the node is up:\n%s", f)
	}
	info.pid = 7
	if f := renderNodeView(st, nil, info); !strings.Contains(f, "another process (pid 42)") {
		t.Fatalf("a status from another process is not flagged:\n%s", f)
	}
	st.State = "stopping"
	if f := renderNodeView(st, nil, info); !strings.Contains(f, "stopping ...") {
		t.Fatalf("the frame while stopping:\n%s", f)
	}
	// No account key: the view says why there are no earnings.
	st.Node.Earnings = provider.Earnings{Error: "no --account-key"}
	if f := renderNodeView(st, nil, info); !strings.Contains(f, "unknown: no --account-key") {
		t.Fatalf("earnings without an account key:\n%s", f)
	}
}

func TestViewFlag(t *testing.T) {
	for _, c := range []struct {
		view    string
		tty, on bool
		bad     bool
	}{
		{"auto", true, true, false}, {"auto", false, false, false},
		{"on", false, true, false}, {"off", true, false, false}, {"yes", true, false, true},
	} {
		on, err := viewOn(c.view, c.tty)
		if on != c.on || (err != nil) != c.bad {
			t.Errorf("--view %s on a tty=%v: %v %v", c.view, c.tty, on, err)
		}
	}
}
