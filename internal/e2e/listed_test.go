package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/gateway"
	"github.com/tokenrouter/tokenrouter/internal/launch"
)

// A model is listed only when a call to it would be routed (issue 12). A
// new user polls GET /v1/models until the model shows, then calls it at
// once: on a gateway that just joined, and for a model whose first node
// just joined, such a call is served, or refused 503 only while the
// gateway cannot reach the node for the moment (never 404). A model whose
// only instance is under the floor is not listed, and a call to it gets
// 404 as a model no one serves would. A model whose only node stopped
// stays listed only while the gateway cannot tell it from a node it
// merely cannot reach (calls get 503, retry shortly), and is unlisted
// (404) once it is gone.
func TestListedModelIsCallable(t *testing.T) {
	m := startMeshWith(t, launch.MeshOptions{Nodes: 2, Rate: 0})
	key := newAccount(t, m)
	calls, momentary := 0, 0
	check := func(what string, r listedResult, err error) {
		calls++
		switch {
		case err != nil:
			t.Fatalf("%s: %v", what, err)
		case r.status == http.StatusOK:
		case r.status == http.StatusServiceUnavailable && strings.Contains(r.body, "no_capacity") && noneFree(r.instances):
			momentary++
			t.Logf("%s (listed after %s): 503 while the gateway could not reach its node for the moment: %+v",
				what, r.wait.Round(time.Millisecond), r.instances)
		default:
			t.Errorf("%s (listed after %s): %d %s; the gateway shows %+v", what, r.wait.Round(time.Millisecond), r.status, r.body, r.instances)
		}
	}
	for i := range 5 {
		gw := startGateway(t, m)
		r, err := callWhenListed(gw, key, "synthetic-1")
		check(fmt.Sprintf("a fresh gateway (%d)", i), r, err)
	}
	for i := range 4 {
		model := fmt.Sprintf("fresh-%d", i)
		probe := newEngineProbe(t, model, 0, 0)
		type answer struct {
			r   listedResult
			err error
		}
		done := make(chan answer, 1)
		go func() { r, err := callWhenListed(m.GatewayURL, key, model); done <- answer{r, err} }()
		runNode(t, m, probe.srv.URL, m.PlatformID, m.OperatorKey)
		a := <-done
		check("a fresh model "+model, a.r, a.err)
	}
	t.Logf("%d calls made the moment their model was listed: %d refused for the moment (503), the rest served", calls, momentary)

	t.Run("under the floor", func(t *testing.T) {
		// 2 tok/s: under the 5 tok/s floor once two streams are measured.
		slow := newEngineProbe(t, "slow-1", 2, 0)
		node := runNode(t, m, slow.srv.URL, m.PlatformID, m.OperatorKey)
		waitListed(t, m.GatewayURL, key, "slow-1")
		deadline := time.Now().Add(30 * time.Second)
		for {
			if in, ok := instanceOf(t, m, "slow-1", node); ok && in.State == "below-floor" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the 2 tok/s node never went under the floor")
			}
			if err := streamCall(m.GatewayURL, key, "slow-1", 3); err != nil {
				t.Fatal(err)
			}
		}
		if listed, _ := listingAgrees(t, m, key, "slow-1", time.Second); listed > 0 {
			t.Fatal("a model whose only instance is under the floor is listed")
		}
	})

	t.Run("its node gone", func(t *testing.T) {
		eng := newEngineProbe(t, "gone-1", 0, 0)
		node, stop := startNode(t, m, eng.srv.URL)
		waitListed(t, m.GatewayURL, key, "gone-1")
		if r, err := callOnce(m.GatewayURL, key, "gone-1"); err != nil || r.status != 200 {
			t.Fatalf("a call to gone-1 while its node serves: %+v %v", r, err)
		}
		stop()
		stopped := time.Now()
		// Wait until this gateway has seen the node go (its connection
		// closed, or membership): from then on it is no candidate.
		for {
			in, ok := instanceOf(t, m, "gone-1", node)
			if !ok || !in.Candidate {
				break
			}
			if time.Since(stopped) > 15*time.Second {
				t.Fatal("the gateway still counts the stopped node as a candidate after 15s")
			}
			time.Sleep(20 * time.Millisecond)
		}
		// Past a health report (every 5 s) and the announcement timeout
		// (10 s): it never becomes a candidate again, and ends unlisted.
		listed, unlisted := listingAgrees(t, m, key, "gone-1", 12*time.Second)
		if ok, _ := modelListed(m.GatewayURL, key, "gone-1"); ok {
			t.Fatalf("gone-1 is still listed %s after its only node stopped", time.Since(stopped).Round(time.Second))
		}
		t.Logf("after its only node stopped, gone-1 was listed (calls refused 503) %d times, unlisted (404) %d times", listed, unlisted)
	})
}

// listingAgrees checks every 50 ms for d that GET /v1/models and a call
// agree on model: a listed model is served, or refused 503 no_capacity
// only while the gateway shows every instance of it full, parked or away
// (unreachable for now); a model not listed gets 404 model_not_found. It
// returns how many times the model was listed, and how many not.
func listingAgrees(t *testing.T, m *launch.Mesh, key, model string, d time.Duration) (listed, unlisted int) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		ok, err := modelListed(m.GatewayURL, key, model)
		if err != nil {
			t.Fatal(err)
		}
		r, err := callOnce(m.GatewayURL, key, model)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case ok && r.status == http.StatusOK:
			listed++
		case ok && r.status == http.StatusServiceUnavailable && strings.Contains(r.body, "no_capacity"):
			listed++
			if ins := modelInstances(t, m, model); !noneFree(ins) {
				t.Fatalf("GET /v1/models lists %s, a call to it got 503, yet the gateway shows an instance free to take it: %+v", model, ins)
			}
		case ok && r.status == http.StatusNotFound:
			// Listed, then unknown: only if the network changed in between
			// (the node gone), which the listing now shows too.
			if still, err := modelListed(m.GatewayURL, key, model); err != nil || still {
				t.Fatalf("GET /v1/models lists %s, yet a call to it got %d %s", model, r.status, r.body)
			}
			unlisted++
		case ok:
			t.Fatalf("GET /v1/models lists %s, yet a call to it got %d %s", model, r.status, r.body)
		case r.status != http.StatusNotFound || !strings.Contains(r.body, "model_not_found"):
			t.Fatalf("GET /v1/models does not list %s, yet a call to it got %d %s (want 404 model_not_found)", model, r.status, r.body)
		default:
			unlisted++
		}
	}
	return listed, unlisted
}

// modelInstances is what the gateway's /debug/instances shows of model.
func modelInstances(t *testing.T, m *launch.Mesh, model string) []gateway.InstanceInfo {
	t.Helper()
	ins, err := debugModel(m.GatewayURL, m.DemoKey, model)
	if err != nil {
		t.Fatal(err)
	}
	return ins
}

// debugModel is what gw's /debug/instances shows of model.
func debugModel(gw, key, model string) ([]gateway.InstanceInfo, error) {
	req, _ := http.NewRequest(http.MethodGet, gw+"/debug/instances", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var dbg struct {
		Models []gateway.ModelInfo `json:"models"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&dbg); err != nil {
		return nil, fmt.Errorf("GET /debug/instances: %s: %w", resp.Status, err)
	}
	for _, mi := range dbg.Models {
		if mi.ID == model {
			return mi.Instances, nil
		}
	}
	return nil, nil
}

// noneFree reports whether a listed model's instances leave a call no
// room: each instance that keeps it listed (route.Info.Routable) is full,
// parked or probing, or away (cannot be reached for the moment), and there
// is one. Those are the only reasons a listed model may be refused (503,
// retry shortly); an instance under the floor keeps no model listed.
func noneFree(ins []gateway.InstanceInfo) bool {
	n := 0
	for _, in := range ins {
		if !in.Routable {
			continue
		}
		n++
		if busy := in.InFlight+in.Local >= in.Declared; !in.Away && !busy && in.Breaker == "closed" {
			return false
		}
	}
	return n > 0
}

// listedResult is a call made the moment /v1/models listed its model.
type listedResult struct {
	status    int
	body      string
	wait      time.Duration          // from the start of polling to the listing
	instances []gateway.InstanceInfo // what the gateway showed of the model right after a call not served
}

// callWhenListed polls gw's GET /v1/models as fast as it can until model
// is listed, then at once makes a paid call to it, as a new user would.
func callWhenListed(gw, key, model string) (listedResult, error) {
	start := time.Now()
	for {
		listed, err := modelListed(gw, key, model)
		if err != nil {
			return listedResult{}, err
		}
		if listed {
			break
		}
		if time.Since(start) > 30*time.Second {
			return listedResult{}, fmt.Errorf("%s never listed %s", gw, model)
		}
	}
	r, err := callOnce(gw, key, model)
	r.wait = time.Since(start)
	if err == nil && r.status != http.StatusOK {
		r.instances, err = debugModel(gw, key, model)
	}
	return r, err
}

// callOnce makes one small non-streamed chat completion.
func callOnce(gw, key, model string) (listedResult, error) {
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}],"max_tokens":2}`, model)
	req, _ := http.NewRequest(http.MethodPost, gw+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return listedResult{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return listedResult{status: resp.StatusCode, body: strings.TrimSpace(string(b))}, err
}

// streamCall makes one streamed chat completion of n tokens and reads it
// to its end.
func streamCall(gw, key, model string, n int) error {
	body := fmt.Sprintf(`{"model":%q,"stream":true,"messages":[{"role":"user","content":"hi"}],"max_tokens":%d}`, model, n)
	req, _ := http.NewRequest(http.MethodPost, gw+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "data: [DONE]") {
		return fmt.Errorf("stream of %s: %d %s %v", model, resp.StatusCode, b, err)
	}
	return err
}

// modelListed reports whether gw's GET /v1/models lists model.
func modelListed(gw, key, model string) (bool, error) {
	req, _ := http.NewRequest(http.MethodGet, gw+"/v1/models", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("GET /v1/models: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return false, err
	}
	for _, m := range list.Data {
		if m.ID == model {
			return true, nil
		}
	}
	return false, nil
}

// waitListed waits until gw lists model.
func waitListed(t *testing.T, gw, key, model string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		listed, err := modelListed(gw, key, model)
		if err != nil {
			t.Fatal(err)
		}
		if listed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listed after 30s", model)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startGateway starts one more gateway on the mesh and returns its URL as
// soon as its HTTP API serves (before it has heard any node, maybe). tune,
// when given, adjusts its configuration.
func startGateway(t *testing.T, m *launch.Mesh, tune ...func(*gateway.Config)) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	done := make(chan error, 1)
	go func() {
		done <- launch.Gateway(ctx, launch.GatewayOptions{
			Common:   launch.Common{Data: dir, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Bootstrap: []string{m.BootstrapAddr}},
			Platform: m.PlatformID, HTTP: "127.0.0.1:0",
			Tune: func(c *gateway.Config) {
				for _, f := range tune {
					f(c)
				}
			},
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitRole(t, dir, done)
	addr, err := launch.ReadFirstLine(filepath.Join(dir, "http-addr"))
	if err != nil {
		t.Fatal(err)
	}
	return "http://" + addr
}

// startNode starts a node in front of upstream for the mesh's operator and
// returns its peer id once it serves, and a stop that ends it.
func startNode(t *testing.T, m *launch.Mesh, upstream string) (string, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	done := make(chan error, 1)
	go func() {
		done <- launch.Node(ctx, launch.NodeOptions{
			Common:   launch.Common{Data: dir, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Bootstrap: []string{m.BootstrapAddr}},
			Platform: m.PlatformID, Upstream: upstream + "/v1", AccountKey: m.OperatorKey, Synthetic: true,
		})
	}()
	var stopped bool
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("node: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	waitRole(t, dir, done)
	id, err := launch.ReadFirstLine(filepath.Join(dir, "peer-id"))
	if err != nil {
		t.Fatal(err)
	}
	return id, stop
}

// waitRole waits for a role's ready file in dir; done is where the role's
// end is reported (put back if it ended, for the cleanup that waits on it).
func waitRole(t *testing.T, dir string, done chan error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
			return
		}
		select {
		case err := <-done:
			done <- err
			t.Fatalf("%s stopped: %v", dir, err)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready in 30s", dir)
		}
	}
}
