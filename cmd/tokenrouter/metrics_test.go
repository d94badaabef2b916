package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/internal/launch"
)

// dashboardFile is the Grafana dashboard docs/metrics.md points at.
var dashboardFile = filepath.Join("..", "..", "docs", "grafana-dashboard.json")

// Every role's metrics, scraped from real processes after paid calls
// (streamed and not) and one for a model no node serves: node and bootstrap
// on --metrics listeners of their own, settle on both --http and
// --metrics, the gateway on --http. Every family an operator watches is
// there with the values those calls must have left, and every metric the
// Grafana dashboard queries exists.
func TestMetricsOfEveryRole(t *testing.T) {
	root := t.TempDir()
	d := func(n string) string { return filepath.Join(root, n) }
	lo, anyPort := "/ip4/127.0.0.1/tcp/0", "127.0.0.1:0"

	boot := start(t, "bootstrap", nil, "bootstrap", "--data", d("boot"), "--listen", lo, "--metrics", anyPort)
	waitFile(t, boot, filepath.Join(d("boot"), "ready"))
	maddr := waitFile(t, boot, filepath.Join(d("boot"), "addrs"))
	bootMetrics := "http://" + waitFile(t, boot, filepath.Join(d("boot"), "metrics-addr"))

	settle := start(t, "settle", nil, "settle", "--data", d("settle"), "--listen", lo, "--bootstrap", maddr,
		"--http", anyPort, "--signup-limit", "0", "--metrics", anyPort)
	waitFile(t, settle, filepath.Join(d("settle"), "ready"))
	platform := waitFile(t, settle, filepath.Join(d("settle"), "peer-id"))
	settleURL := "http://" + waitFile(t, settle, filepath.Join(d("settle"), "http-addr"))
	settleMetrics := "http://" + waitFile(t, settle, filepath.Join(d("settle"), "metrics-addr"))
	ctx := context.Background()
	operator, err := launch.CreateAccount(ctx, settleURL)
	if err != nil {
		t.Fatal(err)
	}
	consumer, err := launch.CreateAccount(ctx, settleURL)
	if err != nil {
		t.Fatal(err)
	}

	eng := start(t, "engine", nil, "engine", "--listen", anyPort, "--data", d("engine"), "--model", "synthetic-1", "--rate", "0")
	engineAddr := waitFile(t, eng, filepath.Join(d("engine"), "http-addr"))
	node := start(t, "node", []string{"TOKENROUTER_ACCOUNT_KEY=" + operator.APIKey, "TOKENROUTER_METRICS=" + anyPort}, "node",
		"--data", d("node"), "--listen", lo, "--bootstrap", maddr, "--platform", platform,
		"--upstream", "http://"+engineAddr+"/v1", "--capacity", "4", "--synthetic")
	waitFile(t, node, filepath.Join(d("node"), "ready"))
	nodeMetrics := "http://" + waitFile(t, node, filepath.Join(d("node"), "metrics-addr"))

	gw := start(t, "gateway", nil, "gateway", "--data", d("gw"), "--listen", lo, "--bootstrap", maddr,
		"--platform", platform, "--http", anyPort)
	waitFile(t, gw, filepath.Join(d("gw"), "ready"))
	gwURL := "http://" + waitFile(t, gw, filepath.Join(d("gw"), "http-addr"))
	if err := launch.WaitInstances(ctx, gwURL, consumer.APIKey, 1, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	m := &procMesh{t: t, gwURL: gwURL, consumerKey: consumer.APIKey}
	for _, stream := range []bool{false, true} {
		if r := m.call(chat(8, stream)); r.status != 200 {
			t.Fatalf("paid call (stream %v): %d %s", stream, r.status, r.body)
		}
	}
	if r := m.call(`{"model":"nobody-serves-this","messages":[{"role":"user","content":"hi"}]}`); r.status != 404 {
		t.Fatalf("call for an unknown model: %d %s", r.status, r.body)
	}
	// Both calls settled: receipts applied, and the node's own claims (sent
	// a second's worth at a time) reached the settlement peer.
	waitMetric(t, settleURL, "tokenrouter_settle_receipts_total", 2, "outcome", "applied")
	waitMetric(t, settleURL, "tokenrouter_settle_node_claims_total", 2)

	g := scrape(t, gwURL+"/metrics")
	g.atLeast(t, 1, "tokenrouter_gateway_requests_total", "code", "200", "endpoint", "/chat/completions")
	g.atLeast(t, 1, "tokenrouter_gateway_requests_total", "code", "404")
	g.atLeast(t, 3, "tokenrouter_gateway_request_seconds_count")
	g.atLeast(t, 1, "tokenrouter_gateway_ttft_seconds_count", "stream", "true")
	g.atLeast(t, 1, "tokenrouter_gateway_ttft_seconds_count", "stream", "false")
	g.atMost(t, 2, "tokenrouter_gateway_ttft_seconds_count") // the 404 sent no answer
	g.atLeast(t, 2, "tokenrouter_gateway_routing_decisions_total", "decision", "chosen", "reason", "least_loaded")
	g.atLeast(t, 1, "tokenrouter_gateway_routing_decisions_total", "decision", "no_candidate", "reason", "model_not_found")
	g.atLeast(t, 2, "tokenrouter_gateway_attempts_total", "outcome", "success")
	g.atLeast(t, 1, "tokenrouter_gateway_breaker_instances", "state", "closed")
	g.atMost(t, 0, "tokenrouter_gateway_breaker_instances", "state", "open")
	g.atLeast(t, 1, "tokenrouter_gateway_candidates")
	g.atLeast(t, 1, "tokenrouter_gateway_billed_tokens_total", "kind", "completion")
	g.atLeast(t, 1, "tokenrouter_gateway_credit_holds")
	g.atLeast(t, 1, "tokenrouter_gateway_credit_remaining_ucr")
	g.atLeast(t, 1, "tokenrouter_gateway_credit_topups_total", "result", "ok")
	g.atLeast(t, 1, "tokenrouter_gateway_gossip_messages_total", "verdict", "accepted", "topic", "tokenrouter/load/1")
	g.atLeast(t, 1, "tokenrouter_gateway_connected_peers")
	g.exists(t, "tokenrouter_gateway_receipts_pending", "tokenrouter_gateway_in_flight", "go_goroutines", "process_cpu_seconds_total")

	n := scrape(t, nodeMetrics+"/metrics")
	n.atLeast(t, 2, "tokenrouter_node_calls_total", "model", "synthetic-1", "result", "served")
	n.atLeast(t, 1, "tokenrouter_node_tokens_total", "kind", "completion")
	n.atLeast(t, 1, "tokenrouter_node_tokens_total", "kind", "prompt")
	n.atLeast(t, 2, "tokenrouter_node_ttft_seconds_count", "model", "synthetic-1")
	n.atLeast(t, 2, "tokenrouter_node_call_seconds_count", "model", "synthetic-1")
	n.atLeast(t, 4, "tokenrouter_node_capacity", "model", "synthetic-1")
	n.atMost(t, 0, "tokenrouter_node_in_flight", "model", "synthetic-1")
	n.atLeast(t, 1, "tokenrouter_node_announcements_total", "result", "published")
	n.atLeast(t, 1, "tokenrouter_node_connected_peers")
	n.exists(t, "tokenrouter_node_measured_tok_per_second", "tokenrouter_node_gossip_messages_total", "go_goroutines", "process_cpu_seconds_total")

	s := scrape(t, settleURL+"/metrics")
	s.atLeast(t, 2, "tokenrouter_settle_receipts_total", "outcome", "applied")
	s.atLeast(t, 1, "tokenrouter_settle_ledger_commits_total", "op", "receipts", "result", "ok")
	s.atLeast(t, 1, "tokenrouter_settle_ledger_commits_total", "op", "hold", "result", "ok")
	s.atLeast(t, 1, "tokenrouter_settle_ledger_commit_seconds_count", "op", "receipts")
	s.atMost(t, 0, "tokenrouter_settle_ledger_commits_total", "result", "error")
	s.atLeast(t, 1, "tokenrouter_settle_holds_open")
	s.atLeast(t, 1, "tokenrouter_settle_held_ucr")
	s.atLeast(t, 5, "tokenrouter_settle_accounts") // mint, platform, bounty_pool and the two created here
	s.atLeast(t, 2, "tokenrouter_settle_accounts_created_total")
	s.atLeast(t, 4, "tokenrouter_settle_ledger_transfers_total") // two grants, then each call's split
	s.atLeast(t, 1, "tokenrouter_settle_gossip_messages_total", "verdict", "accepted")
	s.exists(t, "tokenrouter_settle_ledger_chain_links", "go_goroutines", "process_cpu_seconds_total")
	// The --metrics listener serves the very same registry.
	s2 := scrape(t, settleMetrics+"/metrics")
	s2.atLeast(t, 2, "tokenrouter_settle_receipts_total", "outcome", "applied")

	b := scrape(t, bootMetrics+"/metrics")
	b.atLeast(t, 3, "tokenrouter_bootstrap_connected_peers") // settle, node and gateway
	b.atLeast(t, 1, "tokenrouter_bootstrap_gossip_messages_total", "verdict", "accepted")
	b.atLeast(t, 1, "tokenrouter_bootstrap_members")
	b.exists(t, "tokenrouter_bootstrap_relay_reservations", "tokenrouter_bootstrap_relay_circuits",
		"tokenrouter_bootstrap_dht_routing_table_peers", "go_goroutines", "process_cpu_seconds_total")
	// A --metrics listener serves /metrics and nothing else.
	if status, _ := getWithStatus(t, bootMetrics+"/healthz", ""); status != http.StatusNotFound {
		t.Fatalf("GET /healthz on the metrics listener: %d, want 404", status)
	}

	// Every metric the dashboard queries is one a role exposes.
	all := map[string]bool{}
	for _, sc := range []scraped{g, n, s, b} {
		for name := range sc.names() {
			all[name] = true
		}
	}
	for _, e := range dashboardExprs(t) {
		for _, name := range exprMetrics(e.expr) {
			if !all[name] {
				t.Errorf("dashboard panel %q queries %s, which no role exposes (expr %s)", e.panel, name, e.expr)
			}
		}
	}

	// A stopped role takes its metrics-addr with it.
	boot.stop(syscall.SIGTERM)
	if _, err := os.Stat(filepath.Join(d("boot"), "metrics-addr")); !os.IsNotExist(err) {
		t.Fatalf("metrics-addr left behind by a stopped bootstrap peer: %v", err)
	}
}

// The dashboard imports into Grafana: schema 39, one Prometheus data
// source input that every panel and query uses, unique panel ids, and a
// query on every panel that is not a row.
func TestGrafanaDashboardShape(t *testing.T) {
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Inputs []struct {
			Name     string `json:"name"`
			Type     string `json:"type"`
			PluginID string `json:"pluginId"`
		} `json:"__inputs"`
		SchemaVersion int            `json:"schemaVersion"`
		UID           string         `json:"uid"`
		Title         string         `json:"title"`
		Panels        []grafanaPanel `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s is not JSON: %v", dashboardFile, err)
	}
	if dash.SchemaVersion < 36 || dash.UID == "" || dash.Title == "" {
		t.Fatalf("schemaVersion %d, uid %q, title %q", dash.SchemaVersion, dash.UID, dash.Title)
	}
	if len(dash.Inputs) != 1 || dash.Inputs[0].Name != "DS_PROMETHEUS" || dash.Inputs[0].PluginID != "prometheus" {
		t.Fatalf("inputs %+v: want one prometheus data source DS_PROMETHEUS", dash.Inputs)
	}
	ids := map[int]bool{}
	for _, p := range flatten(dash.Panels) {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Datasource.UID != "${DS_PROMETHEUS}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: datasource %q, %d queries", p.Title, p.Datasource.UID, len(p.Targets))
		}
		for _, q := range p.Targets {
			if q.Datasource.UID != "${DS_PROMETHEUS}" || len(exprMetrics(q.Expr)) == 0 {
				t.Errorf("panel %q: query %q on datasource %q names no metric", p.Title, q.Expr, q.Datasource.UID)
			}
		}
	}
	if len(dashboardExprs(t)) < 20 {
		t.Fatalf("only %d queries", len(dashboardExprs(t)))
	}
}

type grafanaPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr       string `json:"expr"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"` // a collapsed row's
}

func flatten(ps []grafanaPanel) []grafanaPanel {
	var out []grafanaPanel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, flatten(p.Panels)...)
	}
	return out
}

type dashboardExpr struct{ panel, expr string }

// dashboardExprs is every query of the dashboard, with its panel's title.
func dashboardExprs(t *testing.T) []dashboardExpr {
	t.Helper()
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []grafanaPanel `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	var out []dashboardExpr
	for _, p := range flatten(dash.Panels) {
		for _, q := range p.Targets {
			out = append(out, dashboardExpr{p.Title, q.Expr})
		}
	}
	return out
}

// metricName matches the metric names a query can use: ours, and the Go
// and process collectors'. Label values are quoted, so they are cut first.
var (
	metricName  = regexp.MustCompile(`\b(?:tokenrouter|go|process)_[a-zA-Z0-9_]+`)
	quotedValue = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
)

func exprMetrics(expr string) []string {
	return metricName.FindAllString(quotedValue.ReplaceAllString(expr, `""`), -1)
}

func TestExprMetrics(t *testing.T) {
	got := exprMetrics(`histogram_quantile(0.95, sum by (le) (rate(tokenrouter_node_ttft_seconds_bucket{model="go_x"}[$__rate_interval]))) / go_goroutines`)
	if strings.Join(got, ",") != "tokenrouter_node_ttft_seconds_bucket,go_goroutines" {
		t.Fatalf("exprMetrics = %q", got)
	}
}

// series is one sample of a scrape.
type series struct {
	name   string
	labels map[string]string
	value  float64
}

type scraped []series

// scrape reads a /metrics page in Prometheus's text format.
func scrape(t *testing.T, url string) scraped {
	t.Helper()
	body := getJSON(t, url, "")
	var out scraped
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			t.Fatalf("%s: line %q: %v", url, line, err)
		}
		out = append(out, s)
	}
	return out
}

// parseSample reads `name{k="v",...} value [timestamp]`.
func parseSample(line string) (series, error) {
	s := series{labels: map[string]string{}}
	i := strings.IndexAny(line, "{ ")
	if i <= 0 {
		return s, fmt.Errorf("no name")
	}
	s.name, line = line[:i], line[i:]
	if line[0] == '{' {
		line = line[1:]
		for {
			line = strings.TrimLeft(line, ", ")
			if strings.HasPrefix(line, "}") {
				line = line[1:]
				break
			}
			eq := strings.Index(line, `="`)
			if eq <= 0 {
				return s, fmt.Errorf("bad label at %q", line)
			}
			key := line[:eq]
			line = line[eq+2:]
			var val strings.Builder
			for j := 0; ; j++ {
				if j >= len(line) {
					return s, fmt.Errorf("unterminated label value")
				}
				c := line[j]
				if c == '\\' && j+1 < len(line) {
					j++
					switch line[j] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(line[j])
					}
					continue
				}
				if c == '"' {
					line = line[j+1:]
					break
				}
				val.WriteByte(c)
			}
			s.labels[key] = val.String()
		}
	}
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return s, fmt.Errorf("no value")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	s.value = v
	return s, err
}

func TestParseSample(t *testing.T) {
	s, err := parseSample(`tokenrouter_gateway_requests_total{code="200",endpoint="/chat/completions",x="a\"b,c}"} 3 1700000000`)
	if err != nil || s.name != "tokenrouter_gateway_requests_total" || s.value != 3 ||
		s.labels["code"] != "200" || s.labels["endpoint"] != "/chat/completions" || s.labels["x"] != `a"b,c}` {
		t.Fatalf("%+v %v", s, err)
	}
	if s, err := parseSample(`go_goroutines 12`); err != nil || s.name != "go_goroutines" || s.value != 12 {
		t.Fatalf("%+v %v", s, err)
	}
}

// sum adds the samples of name whose labels match kv (key, value, ...);
// found reports whether any did.
func (sc scraped) sum(name string, kv ...string) (total float64, found bool) {
	for _, s := range sc {
		if s.name != name {
			continue
		}
		ok := true
		for i := 0; i+1 < len(kv); i += 2 {
			if s.labels[kv[i]] != kv[i+1] {
				ok = false
				break
			}
		}
		if ok {
			total += s.value
			found = true
		}
	}
	return total, found
}

func (sc scraped) atLeast(t *testing.T, want float64, name string, kv ...string) {
	t.Helper()
	if got, found := sc.sum(name, kv...); !found || got < want {
		t.Errorf("%s%v = %v (found %v), want at least %v", name, kv, got, found, want)
	}
}

// atMost checks an upper bound; absent series count as 0.
func (sc scraped) atMost(t *testing.T, want float64, name string, kv ...string) {
	t.Helper()
	if got, _ := sc.sum(name, kv...); got > want {
		t.Errorf("%s%v = %v, want at most %v", name, kv, got, want)
	}
}

func (sc scraped) exists(t *testing.T, names ...string) {
	t.Helper()
	all := sc.names()
	for _, name := range names {
		if !all[name] {
			t.Errorf("no %s in the scrape", name)
		}
	}
}

func (sc scraped) names() map[string]bool {
	out := map[string]bool{}
	for _, s := range sc {
		out[s.name] = true
	}
	return out
}

func (sc scraped) String() string {
	var lines []string
	for _, s := range sc {
		lines = append(lines, fmt.Sprintf("%s%v %v", s.name, s.labels, s.value))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// waitMetric waits (10 s at most) until a role's series reach want.
func waitMetric(t *testing.T, baseURL, name string, want float64, kv ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := scrape(t, baseURL+"/metrics").sum(name, kv...)
		if got >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v stayed at %v, want %v", name, kv, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
