package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/p2p"
)

// Two machines, one identity: a second node process started from a copy of
// node-0's identity key, on another port. Both copies are refused (the
// gateway routes nothing to that peer id, /v1/models lists none of it),
// GET /v1/nodes and /debug/instances say why, and the node logs it. When
// the copy stops, the original is readmitted.
func TestTwinsRefusedThenSurvivorReadmitted(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a mesh of processes")
	}
	m := startProcMesh(t, meshSpec{nodes: 2, capacity: 4})
	twinID, honestID := m.nodeIDs[0], m.nodeIDs[1]

	// The copy: its own data directory holding node-0's key (as a copied
	// config directory would), its own engine and port, the same account.
	copyDir := m.dir("node-0-copy")
	if err := os.MkdirAll(copyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(m.dir("node-0"), p2p.IdentityFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(copyDir, p2p.IdentityFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	m.startEngine(2, "127.0.0.1:0")
	started := time.Now()
	twin := start(t, "node-0-copy", []string{"TOKENROUTER_ACCOUNT_KEY=" + m.operatorKey}, "node", "--data", copyDir,
		"--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", m.maddr, "--platform", m.platform,
		"--upstream", "http://"+m.engineAddrs[2]+"/v1", "--capacity", "4", "--synthetic")
	waitFile(t, twin, filepath.Join(copyDir, "ready"))
	if got := waitFile(t, twin, filepath.Join(copyDir, "peer-id")); got != twinID {
		t.Fatalf("the copy runs as %s, want node-0's %s", got, twinID)
	}
	orig, _ := addrLines(filepath.Join(m.dir("node-0"), "addrs"))
	cp, _ := addrLines(filepath.Join(copyDir, "addrs"))
	t.Logf("node-0 %s listens on %v; its copy on %v", twinID, orig, cp)

	// Detection: the gateway refuses the peer id, the settlement peer says why.
	var gwAt, settleAt time.Duration
	var reason string
	deadline := started.Add(60 * time.Second)
	for (gwAt == 0 || settleAt == 0) && time.Now().Before(deadline) {
		if gwAt == 0 {
			if in, ok := m.debugInstance(twinID); ok && in.State == "refused" {
				gwAt = time.Since(started)
				if !strings.Contains(in.Reason, twinID) || in.Status != p2p.RefusedDuplicateIdentity {
					t.Errorf("/debug/instances: refused with status %q, reason %q", in.Status, in.Reason)
				}
				t.Logf("gateway refused %s after %v (by %s): %s", twinID, gwAt.Round(time.Millisecond), in.RefusedBy, in.Reason)
			}
		}
		if settleAt == 0 {
			if n, ok := m.nodeStatus(twinID); ok && n.Status == p2p.RefusedDuplicateIdentity {
				settleAt, reason = time.Since(started), n.DuplicateIdentity
				t.Logf("settlement refused %s after %v: %s", twinID, settleAt.Round(time.Millisecond), reason)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if gwAt == 0 || settleAt == 0 {
		t.Fatalf("not refused within 60 s of the copy starting (gateway %v, settlement %v); instances %+v", gwAt, settleAt, m.instances())
	}
	t.Logf("detection time (copy started -> refused): gateway %v, settlement %v", gwAt.Round(time.Millisecond), settleAt.Round(time.Millisecond))
	if !strings.Contains(reason, "two hosts announce peer "+twinID+" from different addresses") || !strings.Contains(reason, "both are refused until one stops") {
		t.Fatalf("GET /v1/nodes reason %q", reason)
	}

	// While refused: no instance of it in /v1/models, every call to the honest node.
	if m.modelsHave(twinID) {
		t.Fatalf("/v1/models lists an instance of the refused %s", twinID)
	}
	for i := range 12 {
		r := m.call(chat(4, i%2 == 0))
		if r.status != 200 || r.node != honestID {
			t.Fatalf("call %d while %s is refused: %d from %q (want the honest %s): %s", i, twinID, r.status, r.node, honestID, r.body)
		}
	}

	// The operator sees it in the node's log (health reports reach the
	// peer id through whichever of its two hosts each neighbour talks to).
	const warn = "the network refuses this node"
	var logged []string
	for until := time.Now().Add(20 * time.Second); len(logged) == 0 && time.Now().Before(until); time.Sleep(100 * time.Millisecond) {
		for _, p := range []*proc{m.nodes[0], twin} {
			if strings.Contains(p.out.String(), warn) {
				logged = append(logged, p.name)
			}
		}
	}
	if len(logged) == 0 {
		t.Fatalf("neither copy logged %q", warn)
	}
	for _, p := range []*proc{m.nodes[0], twin} {
		if i := strings.Index(p.out.String(), warn); i >= 0 {
			line := p.out.String()[i:]
			line, _, _ = strings.Cut(line, "\n")
			t.Logf("%s logged: %s", p.name, line)
			if !strings.Contains(line, "identity.key") || !strings.Contains(line, "--data") {
				t.Errorf("%s's warning does not tell the operator what to do: %s", p.name, line)
			}
			if n := strings.Count(p.out.String(), warn); n != 1 {
				t.Errorf("%s logged the refusal %d times, want once", p.name, n)
			}
		}
	}

	// The copy stops: the original is readmitted within the clear window plus slack.
	twin.stop(syscall.SIGTERM)
	stopped := time.Now()
	var backGW, backSettle time.Duration
	for (backGW == 0 || backSettle == 0) && time.Since(stopped) < 40*time.Second {
		if backGW == 0 {
			if in, ok := m.debugInstance(twinID); ok && in.State != "refused" && m.modelsHave(twinID) {
				backGW = time.Since(stopped)
			}
		}
		if backSettle == 0 {
			if n, ok := m.nodeStatus(twinID); ok && n.Status == "ok" {
				backSettle = time.Since(stopped)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if backGW == 0 || backSettle == 0 {
		t.Fatalf("the survivor not readmitted within 40 s (gateway %v, settlement %v)", backGW, backSettle)
	}
	t.Logf("readmitted after the copy stopped: gateway %v, settlement %v", backGW.Round(time.Millisecond), backSettle.Round(time.Millisecond))
	if backGW > 30*time.Second {
		t.Errorf("readmission took %v, want within the 15 s window plus slack", backGW)
	}
	// It serves again: calls reach both honest nodes.
	seen := map[string]int{}
	for i := 0; i < 40 && seen[twinID] == 0; i++ {
		r := m.call(chat(4, false))
		if r.status != 200 {
			t.Fatalf("call after readmission: %d %s", r.status, r.body)
		}
		seen[r.node]++
	}
	if seen[twinID] == 0 {
		t.Fatalf("no call reached the readmitted %s: %v", twinID, seen)
	}
	until := time.Now().Add(15 * time.Second)
	for !strings.Contains(m.nodes[0].out.String(), "the network routes to this node again") && time.Now().Before(until) {
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(m.nodes[0].out.String(), "the network routes to this node again") {
		t.Logf("note: node-0 did not log its readmission (it may not have received the refusal itself)")
	}
}

// debugEntry is one instance in the gateway's /debug/instances, with the
// refusal fields.
type debugEntry struct {
	instance
	Status    string `json:"status"`
	Reason    string `json:"reason"`
	RefusedBy string `json:"refused_by"`
}

func (m *procMesh) debugInstance(node string) (debugEntry, bool) {
	m.t.Helper()
	var out struct {
		Models []struct {
			Instances []debugEntry `json:"instances"`
		} `json:"models"`
	}
	if err := json.Unmarshal(getJSON(m.t, m.gwURL+"/debug/instances", m.consumerKey), &out); err != nil {
		m.t.Fatal(err)
	}
	for _, mo := range out.Models {
		for _, in := range mo.Instances {
			if in.Node == node {
				return in, true
			}
		}
	}
	return debugEntry{}, false
}

// nodeStatusEntry is one node of the settlement peer's GET /v1/nodes.
type nodeStatusEntry struct {
	Node              string `json:"node"`
	Status            string `json:"status"`
	Reason            string `json:"reason"`
	DuplicateIdentity string `json:"duplicate_identity"`
}

func (m *procMesh) nodeStatus(node string) (nodeStatusEntry, bool) {
	m.t.Helper()
	var out struct {
		Data []nodeStatusEntry `json:"data"`
	}
	if err := json.Unmarshal(getJSON(m.t, m.settleURL+"/v1/nodes", m.operatorKey), &out); err != nil {
		m.t.Fatal(err)
	}
	for _, n := range out.Data {
		if n.Node == node {
			return n, true
		}
	}
	return nodeStatusEntry{}, false
}

// modelsHave reports whether GET /v1/models lists an instance of node.
func (m *procMesh) modelsHave(node string) bool {
	m.t.Helper()
	var out struct {
		Data []struct {
			Instances []struct {
				Node string `json:"node"`
			} `json:"instances"`
		} `json:"data"`
	}
	if err := json.Unmarshal(getJSON(m.t, m.gwURL+"/v1/models", m.consumerKey), &out); err != nil {
		m.t.Fatal(err)
	}
	for _, d := range out.Data {
		for _, in := range d.Instances {
			if in.Node == node {
				return true
			}
		}
	}
	return false
}

func addrLines(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return strings.Fields(string(b)), nil
}
