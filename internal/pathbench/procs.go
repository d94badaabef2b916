package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tokenrouter/tokenrouter/internal/launch"
)

// proc is one child process: a tokenrouter role or a reverse-proxy hop.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string // its stdout and stderr
	done chan struct{}
}

// procs starts children and stops them in reverse order.
type procs struct {
	dir  string
	list []*proc
}

func (ps *procs) start(name string, env []string, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(ps.dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	ps.list = append(ps.list, p)
	return p, nil
}

// stop sends SIGTERM to every child, last started first, and waits for each.
func (ps *procs) stop() {
	for i := len(ps.list) - 1; i >= 0; i-- {
		p := ps.list[i]
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	}
	ps.list = nil
}

// tail is the end of a child's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// waitFile waits for a role's file (ready, addrs, http-addr...) and returns its first line.
func waitFile(p *proc, path string) (string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if line, err := launch.ReadFirstLine(path); err == nil {
			return line, nil
		}
		select {
		case <-p.done:
			return "", fmt.Errorf("%s exited before writing %s:\n%s", p.name, path, p.tail())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("%s: %s never appeared:\n%s", p.name, path, p.tail())
}

// freeAddr returns a loopback address nothing listens on right now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// setup is everything one benchmark run talks to.
type setup struct {
	ps        procs
	engineURL string // http://host:port of the one engine
	twoHopURL string // the first of two reverse-proxy hops in front of it
	gwURL     string // the gateway, whose node serves from the same engine
	settleURL string
	key       string            // the consumer's API key
	pprof     map[string]string // role -> pprof HOST:PORT
}

// lo is where every libp2p role listens.
const lo = "/ip4/127.0.0.1/tcp/0"

// startAll starts the engine, the two hops and the whole libp2p path.
func startAll(o options) (*setup, error) {
	s := &setup{ps: procs{dir: o.dir}, pprof: map[string]string{}}
	d := func(n string) string { return filepath.Join(o.dir, n) }
	fail := func(err error) (*setup, error) { s.ps.stop(); return nil, err }

	eng, err := s.ps.start("engine", nil, o.bin, "engine", "--listen", "127.0.0.1:0", "--data", d("engine"),
		"--model", model, "--rate", "0")
	if err != nil {
		return fail(err)
	}
	ea, err := waitFile(eng, filepath.Join(d("engine"), "http-addr"))
	if err != nil {
		return fail(err)
	}
	s.engineURL = "http://" + ea

	// Two plain reverse-proxy hops, each its own process (as gateway and node are).
	self, err := os.Executable()
	if err != nil {
		return fail(err)
	}
	target := s.engineURL
	for _, name := range []string{"hop2", "hop1"} {
		p, err := s.ps.start(name, nil, self, "-hop", target)
		if err != nil {
			return fail(err)
		}
		addr, err := readHopAddr(p)
		if err != nil {
			return fail(err)
		}
		target = "http://" + addr
	}
	s.twoHopURL = target

	boot, err := s.ps.start("bootstrap", nil, o.bin, "bootstrap", "--data", d("boot"), "--listen", lo)
	if err != nil {
		return fail(err)
	}
	if _, err := waitFile(boot, filepath.Join(d("boot"), "ready")); err != nil {
		return fail(err)
	}
	maddr, err := waitFile(boot, filepath.Join(d("boot"), "addrs"))
	if err != nil {
		return fail(err)
	}
	prices := d("prices.json")
	if err := os.WriteFile(prices, []byte(pricesJSON), 0o600); err != nil {
		return fail(err)
	}
	settle, err := s.ps.start("settle", nil, o.bin, "settle", "--data", d("settle"), "--listen", lo, "--bootstrap", maddr,
		"--http", "127.0.0.1:0", "--signup-limit", "0", "--prices", prices, "--ramp-start", "1")
	if err != nil {
		return fail(err)
	}
	if _, err := waitFile(settle, filepath.Join(d("settle"), "ready")); err != nil {
		return fail(err)
	}
	platform, err := waitFile(settle, filepath.Join(d("settle"), "peer-id"))
	if err != nil {
		return fail(err)
	}
	sa, err := waitFile(settle, filepath.Join(d("settle"), "http-addr"))
	if err != nil {
		return fail(err)
	}
	s.settleURL = "http://" + sa
	ctx := context.Background()
	op, err := launch.CreateAccount(ctx, s.settleURL)
	if err != nil {
		return fail(err)
	}
	consumer, err := launch.CreateAccount(ctx, s.settleURL)
	if err != nil {
		return fail(err)
	}
	s.key = consumer.APIKey

	roleEnv := func(role string) ([]string, error) {
		if !o.profile {
			return nil, nil
		}
		a, err := freeAddr()
		if err != nil {
			return nil, err
		}
		s.pprof[role] = a
		return []string{"TOKENROUTER_PPROF=" + a}, nil
	}
	env, err := roleEnv("node")
	if err != nil {
		return fail(err)
	}
	node, err := s.ps.start("node", append(env, "TOKENROUTER_ACCOUNT_KEY="+op.APIKey), o.bin, "node", "--data", d("node"),
		"--listen", lo, "--bootstrap", maddr, "--platform", platform, "--upstream", s.engineURL+"/v1",
		"--capacity", fmt.Sprint(nodeCapacity), "--synthetic")
	if err != nil {
		return fail(err)
	}
	if _, err := waitFile(node, filepath.Join(d("node"), "ready")); err != nil {
		return fail(err)
	}
	env, err = roleEnv("gateway")
	if err != nil {
		return fail(err)
	}
	gw, err := s.ps.start("gateway", env, o.bin, "gateway", "--data", d("gw"), "--listen", lo, "--bootstrap", maddr,
		"--platform", platform, "--http", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	if _, err := waitFile(gw, filepath.Join(d("gw"), "ready")); err != nil {
		return fail(err)
	}
	ga, err := waitFile(gw, filepath.Join(d("gw"), "http-addr"))
	if err != nil {
		return fail(err)
	}
	s.gwURL = "http://" + ga
	if err := launch.WaitInstances(ctx, s.gwURL, s.key, 1, 30*time.Second); err != nil {
		return fail(err)
	}
	if err := waitFullRamp(s.gwURL, s.key, 30*time.Second); err != nil {
		return fail(err)
	}
	return s, nil
}

// readHopAddr reads the "listening HOST:PORT" line a hop writes to its log.
func readHopAddr(p *proc) (string, error) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if f, err := os.Open(p.log); err == nil {
			line, _ := bufio.NewReader(f).ReadString('\n')
			f.Close()
			if a, ok := strings.CutPrefix(strings.TrimSpace(line), "listening "); ok {
				return a, nil
			}
		}
		select {
		case <-p.done:
			return "", fmt.Errorf("%s exited:\n%s", p.name, p.tail())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("%s did not say where it listens", p.name)
}

// waitFullRamp waits until the gateway lets the node use its whole declared
// capacity: until settlement's first report, a gateway assumes a new
// instance may take 10% of it, and the benchmark's clients would see 503s.
func waitFullRamp(gwURL, key string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequest(http.MethodGet, gwURL+"/debug/instances", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			var out struct {
				Models []struct {
					Instances []struct {
						RampUp float64 `json:"ramp_up"`
					} `json:"instances"`
				} `json:"models"`
			}
			json.NewDecoder(resp.Body).Decode(&out)
			resp.Body.Close()
			if len(out.Models) > 0 && len(out.Models[0].Instances) > 0 && out.Models[0].Instances[0].RampUp >= 1 {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return errors.New("the gateway never saw the node at full ramp-up")
}

// account is the consumer's account as the settlement peer reports it.
type account struct {
	BalanceUcr int64 `json:"balance_ucr"`
	SpentUcr   int64 `json:"spent_ucr"`
	Calls      int64 `json:"calls"`
}

func (s *setup) account() (account, error) {
	req, _ := http.NewRequest(http.MethodGet, s.settleURL+"/v1/account", nil)
	req.Header.Set("Authorization", "Bearer "+s.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return account{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return account{}, fmt.Errorf("GET /v1/account: %s: %s", resp.Status, b)
	}
	var a account
	return a, json.NewDecoder(resp.Body).Decode(&a)
}
