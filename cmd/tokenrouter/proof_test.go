package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// getWithStatus fetches url with key and returns the status and body.
func getWithStatus(t *testing.T, url, key string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// One real paid call through a mesh of processes: its consumer and its
// node's owner fetch an inclusion proof that verifies against the
// settlement peer's id; a stranger gets the 404 of a call that does not
// exist. With the peer stopped, `ledger prove` proves the call from the
// ledger and checks the served proof offline; after one byte of the ledger
// is flipped, the ledger no longer proves (or verifies).
func TestReceiptProofProcesses(t *testing.T) {
	m := startProcMesh(t, meshSpec{nodes: 1, capacity: 4, engineArgs: func(int) []string { return []string{"--rate", "0"} }})
	req, _ := http.NewRequest(http.MethodPost, m.gwURL+"/v1/chat/completions", strings.NewReader(chat(8, false)))
	req.Header.Set("Authorization", "Bearer "+m.consumerKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	rid := resp.Header.Get("x-tokenrouter-request-id")
	if resp.StatusCode != 200 || rid == "" {
		t.Fatalf("call: %d, request id %q: %s", resp.StatusCode, rid, body)
	}
	id, err := peer.Decode(m.platform)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := id.ExtractPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	proofURL := m.settleURL + "/v1/receipts/" + rid + "/proof"

	// The call settles within seconds; until then there is nothing to prove.
	var status int
	var raw []byte
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if status, raw = getWithStatus(t, proofURL, m.consumerKey); status != http.StatusNotFound {
			break
		}
	}
	if status != 200 {
		t.Fatalf("consumer's proof: %d %s", status, raw)
	}
	var p ledger.Proof
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatal(err)
	}
	if err := ledger.VerifyProof(&p, pub); err != nil {
		t.Fatalf("served proof does not verify: %v\n%s", err, raw)
	}
	if !strings.HasSuffix(p.Key, "/"+rid) || len(p.Leaves) < 2 {
		t.Fatalf("proof of %q with %d leaves", p.Key, len(p.Leaves))
	}
	var acct struct {
		Account string `json:"account"`
	}
	json.Unmarshal(getJSON(t, m.settleURL+"/v1/account", m.consumerKey), &acct)
	var paid, provider bool
	for _, l := range p.Leaves {
		paid = paid || l.Transfer.From == acct.Account
		provider = provider || strings.HasSuffix(l.Transfer.ID, "/provider")
	}
	if !paid || !provider {
		t.Fatalf("proof leaves %+v: want the consumer %s paying a provider", p.Leaves, acct.Account)
	}
	t.Logf("consumer's proof: %s in batch %d, %d of %d leaves, root %s", p.Key, p.Link.Seq, len(p.Leaves), p.TreeSize, p.Link.Root)

	// The node's owner sees it too; a stranger, a bad key and an unknown
	// call do not.
	if status, raw := getWithStatus(t, proofURL, m.operatorKey); status != 200 {
		t.Fatalf("node owner's proof: %d %s", status, raw)
	}
	stranger, err := launch.CreateAccount(context.Background(), m.settleURL)
	if err != nil {
		t.Fatal(err)
	}
	_, unknown := getWithStatus(t, m.settleURL+"/v1/receipts/req_doesnotexist/proof", m.consumerKey)
	status, strangers := getWithStatus(t, proofURL, stranger.APIKey)
	if status != http.StatusNotFound || !strings.Contains(string(strangers), `"code":"not_found"`) {
		t.Fatalf("stranger: %d %s", status, strangers)
	}
	if strings.ReplaceAll(string(strangers), rid, "X") != strings.ReplaceAll(string(unknown), "req_doesnotexist", "X") {
		t.Fatalf("a stranger's 404 differs from an unknown call's:\n%s\n%s", strangers, unknown)
	}
	if status, raw := getWithStatus(t, proofURL, "sk-not-a-key"); status != http.StatusUnauthorized {
		t.Fatalf("bad key: %d %s", status, raw)
	}
	if status, _ := getWithStatus(t, proofURL, ""); status != http.StatusUnauthorized {
		t.Fatalf("no key: %d", status)
	}
	proofFile := filepath.Join(m.root, "proof.json")
	os.WriteFile(proofFile, raw, 0o600)

	// The auditor's view, with the settlement peer stopped.
	m.settle.stop(syscall.SIGTERM)
	run := func(env []string, args ...string) (string, error) {
		cmd := exec.Command(binary, append([]string{"ledger"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run(nil, "prove", "--data", m.dir("settle"), "--platform", m.platform, "--request-id", rid)
	if err != nil || !strings.Contains(out, p.Key+" is in signed batch") {
		t.Fatalf("ledger prove: %v\n%s", err, out)
	}
	t.Logf("ledger prove:\n%s", out)
	// Every flag reads TOKENROUTER_<FLAG>.
	if out, err := run([]string{"TOKENROUTER_DATA=" + m.dir("settle"), "TOKENROUTER_PLATFORM=" + m.platform, "TOKENROUTER_REQUEST_ID=" + rid}, "prove"); err != nil {
		t.Fatalf("ledger prove from the environment: %v\n%s", err, out)
	}
	if out, err := run(nil, "prove", "--proof", proofFile, "--platform", m.platform); err != nil || !strings.Contains(out, "signature checks") {
		t.Fatalf("ledger prove --proof: %v\n%s", err, out)
	}
	if out, err := run(nil, "prove", "--data", m.dir("settle"), "--platform", m.platform, "--request-id", "req_doesnotexist"); err == nil {
		t.Fatalf("ledger prove of an unknown call passed:\n%s", out)
	}
	// A served proof edited by one character does not check.
	forged := strings.Replace(string(raw), `"amount_ucr":`, `"amount_ucr":9`, 1)
	os.WriteFile(proofFile, []byte(forged), 0o600)
	if out, err := run(nil, "prove", "--proof", proofFile, "--platform", m.platform); err == nil {
		t.Fatalf("ledger prove --proof passed an edited proof:\n%s", out)
	} else {
		t.Logf("edited proof: %s", strings.TrimSpace(out))
	}
	// One flipped byte of the ledger: it no longer proves the call, or (if
	// the byte is outside what the proof reads) no longer verifies.
	flipOneByte(t, filepath.Join(m.dir("settle"), "ledger"))
	out, err = run(nil, "prove", "--data", m.dir("settle"), "--platform", m.platform, "--request-id", rid)
	if err == nil {
		t.Logf("ledger prove still passes after the flip:\n%s", out)
		if out, err := run(nil, "verify", "--data", m.dir("settle"), "--platform", m.platform); err == nil {
			t.Fatalf("a flipped ledger proves and verifies:\n%s", out)
		} else {
			t.Logf("ledger verify after the flip: %s", strings.TrimSpace(out))
		}
	} else {
		t.Logf("ledger prove after the flip: %s", strings.TrimSpace(out))
	}
}
