package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/internal/launch"
)

// The addresses of the namespaces. Only the two root links live in the
// root namespace, on a random link-local range; the "internet" between the
// public namespace and the home routers uses a public-looking range
// (AutoNAT and the relay ignore private addresses), which exists only
// inside the namespaces.
const (
	netnsPublicIP   = "11.200.1.1" // bootstrap peer, settlement peer, public gateway (also 11.200.2.1)
	netnsNodeLAN    = "192.168.77" // the node's home network (.1 its router, .2 the node)
	netnsGatewayLAN = "192.168.78" // the NATed gateway's home network
)

var netnsSeq atomic.Int32

// netLab is the internet in network namespaces: a public namespace
// (bootstrap peer, settlement peer, a public gateway) routing between two
// home routers, each doing MASQUERADE with no port forwarding, one in front
// of the node's home (node, engine), one in front of another home holding
// a gateway. The test process reaches the public namespace and the
// gateway's home over veth links from the root namespace (HTTP only).
type netLab struct {
	t                     *testing.T
	prefix                string
	links                 int
	pub, nodeHome, gwHome string // namespace names
	pubHTTP, gwHTTP       string // IPs the test reaches the public namespace and the gateway's home at
}

// newNetLab builds the namespaces, or skips the test saying why it cannot.
// Everything it makes is removed when the test ends, pass or fail.
func newNetLab(t *testing.T) *netLab {
	t.Helper()
	if os.Geteuid() != 0 {
		netnsSkip(t, "network namespaces need root (euid %d)", os.Geteuid())
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			netnsSkip(t, "%s is not installed (.ci/run installs iproute2 and iptables): %v", tool, err)
		}
	}
	// <= 8 characters: interface names (prefix, link number, a/b) stay within 15.
	l := &netLab{t: t, prefix: fmt.Sprintf("tr%d%c", os.Getpid()%100000, 'a'+netnsSeq.Add(1)%26)}
	l.pub = l.netns("pub")
	routerA, routerB := l.netns("ra"), l.netns("rb")
	l.nodeHome, l.gwHome = l.netns("ha"), l.netns("hb")
	_, wanA := l.link(l.pub, netnsPublicIP+"/24", routerA, "11.200.1.2/24")
	_, wanB := l.link(l.pub, "11.200.2.1/24", routerB, "11.200.2.2/24")
	l.link(routerA, netnsNodeLAN+".1/24", l.nodeHome, netnsNodeLAN+".2/24")
	l.link(routerB, netnsGatewayLAN+".1/24", l.gwHome, netnsGatewayLAN+".2/24")
	l.must(l.ip(routerA, "route", "add", "default", "via", "11.200.1.1")...)
	l.must(l.ip(routerB, "route", "add", "default", "via", "11.200.2.1")...)
	l.must(l.ip(l.nodeHome, "route", "add", "default", "via", netnsNodeLAN+".1")...)
	l.must(l.ip(l.gwHome, "route", "add", "default", "via", netnsGatewayLAN+".1")...)
	for _, ns := range []string{l.pub, routerA, routerB} {
		l.must("ip", "netns", "exec", ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
	}
	// A home router: MASQUERADE out of its public side, no port forwarding,
	// and, like home routers, unsolicited packets to itself dropped rather
	// than answered (an answered one would also leave a conntrack entry
	// that makes the NAT pick another port for the flow a hole punch opens).
	for ns, wan := range map[string]string{routerA: wanA, routerB: wanB} {
		for _, rule := range [][]string{{"-t", "nat", "-A", "POSTROUTING", "-o", wan, "-j", "MASQUERADE"}, {"-A", "INPUT", "-i", wan, "-j", "DROP"}} {
			if out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "iptables"}, rule...)...).CombinedOutput(); err != nil {
				netnsSkip(t, "cannot set up the NAT router with iptables %s (no NAT support in this kernel?): %v: %s",
					strings.Join(rule, " "), err, strings.TrimSpace(string(out)))
			}
		}
	}
	x, y := l.pickRootLinks()
	ll := func(last int) string { return fmt.Sprintf("169.254.%d.%d", x, y+last) }
	l.link("", ll(1)+"/30", l.pub, ll(2)+"/30")
	l.link("", ll(5)+"/30", l.gwHome, ll(6)+"/30")
	l.pubHTTP, l.gwHTTP = ll(2), ll(6)
	return l
}

// netnsSkip skips the test saying why, on stderr too: go test shows a
// skip's reason only with -v.
func netnsSkip(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintf(os.Stderr, "SKIP %s: %s\n", t.Name(), msg)
	t.Skip(msg)
}

// netns makes a namespace, removed when the test ends, with loopback up.
func (l *netLab) netns(name string) string {
	l.t.Helper()
	ns := l.prefix + "-" + name
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		netnsSkip(l.t, "cannot make network namespace %s: %v: %s", ns, err, strings.TrimSpace(string(out)))
	}
	l.t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	l.must(l.ip(ns, "link", "set", "lo", "up")...)
	return ns
}

// link joins namespaces a and b ("" is the root namespace) with a veth
// pair addressed cidrA and cidrB, both up, and returns the interface names.
func (l *netLab) link(a, cidrA, b, cidrB string) (string, string) {
	l.t.Helper()
	l.links++
	ia, ib := fmt.Sprintf("%s%da", l.prefix, l.links), fmt.Sprintf("%s%db", l.prefix, l.links)
	l.must("ip", "link", "add", ia, "type", "veth", "peer", "name", ib)
	// Deleting either end deletes the pair; the namespaced ends go with their
	// namespaces, a root end needs this.
	l.t.Cleanup(func() { exec.Command("ip", "link", "del", ia).Run() })
	for _, e := range []struct{ ifc, ns, cidr string }{{ia, a, cidrA}, {ib, b, cidrB}} {
		if e.ns != "" {
			l.must("ip", "link", "set", e.ifc, "netns", e.ns)
		}
		l.must(l.ip(e.ns, "addr", "add", e.cidr, "dev", e.ifc)...)
		l.must(l.ip(e.ns, "link", "set", e.ifc, "up")...)
	}
	return ia, ib
}

// ip is an ip(8) command line run in namespace ns ("" = root).
func (l *netLab) ip(ns string, args ...string) []string {
	if ns == "" {
		return append([]string{"ip"}, args...)
	}
	return append([]string{"ip", "-n", ns}, args...)
}

// pickRootLinks chooses 169.254.x.y/29, two /30s, that no interface of
// the root namespace is near; never 169.254.169.x (cloud metadata).
func (l *netLab) pickRootLinks() (x, y int) {
	out, _ := exec.Command("ip", "-4", "addr", "show").Output()
	for {
		x = 1 + rand.IntN(253)
		if x != 169 && !strings.Contains(string(out), fmt.Sprintf("169.254.%d.", x)) {
			return x, 8 * rand.IntN(31)
		}
	}
}

// must runs a setup command; after the namespaces exist, a failure is the
// test's (an EPERM there would have stopped `ip netns add` already).
func (l *netLab) must(args ...string) {
	l.t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		l.t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// startIn starts a tokenrouter process inside namespace ns, as a user
// would: ip netns exec NS tokenrouter ARGS.
func startIn(t *testing.T, ns, name string, env []string, args ...string) *proc {
	t.Helper()
	return startCmd(t, name, env, exec.Command("ip", append([]string{"netns", "exec", ns, binary}, args...)...))
}

// logLines are p's log lines with msg and every want in them.
func logLines(p *proc, msg string, want ...string) []string {
	var out []string
	for _, line := range strings.Split(p.out.String(), "\n") {
		if !strings.Contains(line, `msg="`+msg+`"`) {
			continue
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// waitLog waits up to d for a log line of p with msg and every want.
func waitLog(t *testing.T, p *proc, d time.Duration, msg string, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if lines := logLines(p, msg, want...); len(lines) > 0 {
			return lines[0]
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never logged %q with %q; output:\n%s", p.name, msg, want, p.out.String())
	return ""
}

// A node at home behind a NAT router (MASQUERADE, no port forwarding)
// finds out it is unreachable and reserves a slot on the bootstrap peer's
// relay; so does a gateway in another home. The gateway reaches the node
// through the relay (then directly, if DCUtR punches a hole through both
// NATs), and the node serves paid calls billed exactly. Then a gateway on
// the public side serves one too. Every role is the binary, run as a user
// runs it.
//
// The NATed gateway is what makes the relay necessary: with membership
// probes, a node dials a public gateway itself (outbound through its NAT)
// within seconds, and that gateway never needs the relay; the public
// gateway's call shows which path it took.
func TestNetnsNodeBehindNAT(t *testing.T) {
	l := newNetLab(t)
	root := t.TempDir()
	d := func(n string) string { return filepath.Join(root, n) }

	boot := startIn(t, l.pub, "bootstrap", nil, "bootstrap", "--data", d("boot"))
	waitFile(t, boot, filepath.Join(d("boot"), "ready"))
	raw, err := os.ReadFile(filepath.Join(d("boot"), "addrs"))
	if err != nil {
		t.Fatal(err)
	}
	var maddr string
	for _, a := range strings.Fields(string(raw)) {
		if strings.HasPrefix(a, "/ip4/"+netnsPublicIP+"/tcp/") {
			maddr = a
		}
	}
	if maddr == "" {
		t.Fatalf("the bootstrap peer lists no %s TCP address: %s", netnsPublicIP, raw)
	}

	settle := startIn(t, l.pub, "settle", nil, "settle", "--data", d("settle"), "--bootstrap", maddr,
		"--http", l.pubHTTP+":0", "--signup-limit", "0")
	waitFile(t, settle, filepath.Join(d("settle"), "ready"))
	platform := waitFile(t, settle, filepath.Join(d("settle"), "peer-id"))
	settleURL := "http://" + waitFile(t, settle, filepath.Join(d("settle"), "http-addr"))
	ctx := context.Background()
	operator, err := launch.CreateAccount(ctx, settleURL)
	if err != nil {
		t.Fatal(err)
	}
	consumer, err := launch.CreateAccount(ctx, settleURL)
	if err != nil {
		t.Fatal(err)
	}

	eng := startIn(t, l.nodeHome, "engine", nil, "engine", "--listen", "127.0.0.1:0", "--data", d("engine"), "--model", "synthetic-1", "--rate", "0")
	engineAddr := waitFile(t, eng, filepath.Join(d("engine"), "http-addr"))
	started := time.Now()
	node := startIn(t, l.nodeHome, "node", []string{"TOKENROUTER_ACCOUNT_KEY=" + operator.APIKey}, "node", "--data", d("node"),
		"--bootstrap", maddr, "--platform", platform, "--upstream", "http://"+engineAddr+"/v1", "--capacity", "4", "--synthetic")
	gw := startIn(t, l.gwHome, "gateway", nil, "gateway", "--data", d("gw"), "--bootstrap", maddr, "--platform", platform,
		"--http", l.gwHTTP+":0")
	waitFile(t, node, filepath.Join(d("node"), "ready"))
	nodeID := waitFile(t, node, filepath.Join(d("node"), "peer-id"))
	waitFile(t, gw, filepath.Join(d("gw"), "ready"))
	gwID := waitFile(t, gw, filepath.Join(d("gw"), "peer-id"))
	gwURL := "http://" + waitFile(t, gw, filepath.Join(d("gw"), "http-addr"))

	// Both learn from AutoNAT that they are behind NAT, and reserve relay slots.
	for _, p := range []*proc{node, gw} {
		waitLog(t, p, 60*time.Second, "nat: reachability", "reachability=Private")
		line := waitLog(t, p, 60*time.Second, "nat: relay addresses", "/p2p-circuit")
		t.Logf("%s behind NAT holds a relay slot (%v after start): %s", p.name, time.Since(started).Round(100*time.Millisecond), line)
	}
	if err := launch.WaitInstances(ctx, gwURL, consumer.APIKey, 1, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	calls, costs := 0, int64(0)
	for range 2 {
		costs += netnsPaidCall(t, gwURL, consumer.APIKey, nodeID)
		calls++
	}
	// Nothing but relay addresses led from the gateway to the node: the node
	// listed its /p2p-circuit addresses, and the connection used one.
	line := waitLog(t, gw, 5*time.Second, "nat: relayed connection", "peer="+nodeID)
	t.Logf("the NATed gateway reached the node through the relay: %s", line)
	t.Logf("DCUtR between the two NATs: %s", netnsUpgrade(node, gw, nodeID, gwID))

	// A public gateway: whatever path it took, the call is served and billed.
	pubGW := startIn(t, l.pub, "public-gateway", nil, "gateway", "--data", d("pubgw"), "--bootstrap", maddr, "--platform", platform,
		"--http", l.pubHTTP+":0", "--log-level", "debug")
	waitFile(t, pubGW, filepath.Join(d("pubgw"), "ready"))
	pubURL := "http://" + waitFile(t, pubGW, filepath.Join(d("pubgw"), "http-addr"))
	if err := launch.WaitInstances(ctx, pubURL, consumer.APIKey, 1, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	costs += netnsPaidCall(t, pubURL, consumer.APIKey, nodeID)
	calls++
	t.Logf("public gateway to the node: %s", netnsPath(node, pubGW, nodeID, waitFile(t, pubGW, filepath.Join(d("pubgw"), "peer-id"))))

	// Billed exactly: the balance falls by what the calls cost.
	deadline := time.Now().Add(10 * time.Second)
	acct := account(t, settleURL, consumer.APIKey)
	for ; acct.Calls < int64(calls) && time.Now().Before(deadline); acct = account(t, settleURL, consumer.APIKey) {
		time.Sleep(100 * time.Millisecond)
	}
	if acct.Calls != int64(calls) || acct.BalanceUcr != 5_000_000-costs {
		t.Fatalf("after %d calls costing %d: %+v", calls, costs, acct)
	}
}

// netnsPaidCall makes one call through the gateway and returns its cost.
func netnsPaidCall(t *testing.T, gwURL, key, nodeID string) int64 {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, gwURL+"/v1/chat/completions", strings.NewReader(chat(9, false)))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("x-tokenrouter-node") != nodeID {
		t.Fatalf("paid call: %s (node %q, want %s) %s", resp.Status, resp.Header.Get("x-tokenrouter-node"), nodeID, raw)
	}
	var out struct {
		Usage struct {
			CostUcr int64 `json:"cost_ucr"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(raw, &out); err != nil || out.Usage.CostUcr <= 0 {
		t.Fatalf("no cost in %s (%v)", raw, err)
	}
	return out.Usage.CostUcr
}

// netnsPath says how gw (run with --log-level debug, so that direct
// connections are logged too) first connected to the node, and what
// followed: through the relay (and whether DCUtR then made a direct
// connection), or directly on a connection the node opened through its NAT.
func netnsPath(node, gw *proc, nodeID, gwID string) string {
	for _, line := range strings.Split(gw.out.String(), "\n") {
		if !strings.Contains(line, "peer="+nodeID) {
			continue
		}
		switch {
		case strings.Contains(line, `msg="nat: relayed connection"`):
			return "through the relay (" + line + "); DCUtR: " + netnsUpgrade(node, gw, nodeID, gwID)
		case strings.Contains(line, `msg="p2p: connected"`):
			return "a direct connection, opened before any relay was needed: " + line
		}
	}
	return "no connection to the node in the gateway's log"
}

// netnsUpgrade waits (up to 20 s) for DCUtR's outcome on the relayed
// connection between node and gw, and says what happened. Any outcome
// passes: whether a hole can be punched depends on the NATs. The side that
// received the relayed connection runs DCUtR: it first dials the other
// side's public addresses, if it has any (connection reversal), then both
// sides punch.
func netnsUpgrade(node, gw *proc, nodeID, gwID string) string {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if direct := logLines(gw, "nat: direct connection after a relayed one", "peer="+nodeID); len(direct) > 0 {
			return "upgraded to a direct connection (" + netnsHow(node, gw, nodeID, gwID) + "): " + direct[0]
		}
		failed := append(logLines(node, "nat: hole punch", "peer="+gwID, "ok=false"), logLines(gw, "nat: hole punch", "peer="+nodeID, "ok=false")...)
		if len(failed) >= 3 {
			return "not upgraded: hole punching failed (DCUtR tries 3 times), the calls stay on the relay: " + failed[len(failed)-1]
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "not upgraded within 20 s: the calls stay on the relay"
}

// netnsHow finds, in the logs, which DCUtR step made the direct connection
// (logged just after the connection itself).
func netnsHow(node, gw *proc, nodeID, gwID string) string {
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		switch {
		case len(logLines(node, "nat: hole punch", "peer="+gwID, "ok=true"))+len(logLines(gw, "nat: hole punch", "peer="+nodeID, "ok=true")) > 0:
			return "hole punched"
		case len(logLines(node, "nat: direct dial to a peer reached through a relay", "peer="+gwID, "ok=true")) > 0:
			return "the node dialled the gateway: connection reversal"
		case len(logLines(gw, "nat: direct dial to a peer reached through a relay", "peer="+nodeID, "ok=true")) > 0:
			return "the gateway dialled the node's public address"
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "the logs do not say how"
}
