package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/openai/openai-go/v3"
	"github.com/tokenrouter/tokenrouter/gateway"
	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// chromium finds Debian's chromium. CI installs it (.ci/run), so there a
// missing browser fails the test; elsewhere it skips.
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no chromium on PATH; .ci/run installs it with apt-get install -y chromium")
	}
	t.Skip("no chromium on PATH (apt-get install -y chromium)")
	return ""
}

// screenshotDir is where the browser test leaves its screenshots:
// TOKENROUTER_SCREENSHOTS (docs/ is refreshed with it), else a temp dir.
func screenshotDir(t *testing.T) string {
	if d := os.Getenv("TOKENROUTER_SCREENSHOTS"); d != "" {
		return d
	}
	return t.TempDir()
}

// startBrowser starts headless chromium for the test.
func startBrowser(t *testing.T) context.Context {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox, // CI runs as root, where chromium's sandbox cannot start
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1200, 1000),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	ctx, cancelTimeout := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(cancelTimeout)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

func shot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

func byID(id string) chromedp.CSS { return chromedp.CSS(`[data-testid="` + id + `"]`) }

// The dashboard in a real browser, against a real mesh: sign up and see
// 5.00 credits, create a key, pay for a call with it and see the balance
// drop by the call's cost, register a cloud node, revoke the key and see
// the next call refused at once, sign out.
func TestDashboardInBrowser(t *testing.T) {
	ctx := startBrowser(t)
	m := startMeshWith(t, launch.MeshOptions{Nodes: 1, Gateway: func(g *launch.GatewayOptions) {
		// A gateway that trusts a checked key for an hour: only the
		// platform's revocation can stop the key in time.
		g.Tune = func(c *gateway.Config) { c.AuthTTL = time.Hour }
	}})
	dir := screenshotDir(t)
	text := func(sel chromedp.CSS) string {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.WaitVisible(sel)); err != nil {
			t.Fatalf("wait for %s: %v", sel, err)
		}
		s, err := chromedp.Run(ctx, chromedp.Text(sel))
		if err != nil {
			t.Fatalf("read %s: %v", sel, err)
		}
		return strings.TrimSpace(s)
	}
	// waitText waits until sel's text holds want: the page after a form
	// post, not the one the form was on.
	waitText := func(sel chromedp.CSS, want string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			got, err := chromedp.Run(ctx, chromedp.Text(sel))
			if err == nil && strings.Contains(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s says %q, not %q", sel, got, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	run := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	// Sign up: the key is shown once, the balance is the starting credit.
	run("sign up", chromedp.Navigate(m.SettleURL+"/"), chromedp.Click(byID("signup")))
	first := text(byID("api-key"))
	if !strings.HasPrefix(first, "trk_") {
		t.Fatalf("shown key = %q", first)
	}
	if b := text(byID("balance")); b != "5.00" {
		t.Fatalf("balance after sign-up = %q; want 5.00", b)
	}
	shot(t, ctx, dir, "signup.png")

	// Create a key.
	run("create a key",
		chromedp.SendKeys(byID("key-name"), "browser test"),
		chromedp.Click(byID("create-key")))
	waitText(chromedp.CSS(`.once h2`), "browser test") // the new key's page, not the sign-up's
	key := text(byID("api-key"))
	if key == first || !strings.HasPrefix(key, "trk_") {
		t.Fatalf("created key = %q", key)
	}

	// A paid call through the gateway with it; the dashboard's balance
	// drops by exactly its cost once the receipt settles.
	c := client(t, m, key)
	resp, err := c.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model:    "synthetic-1",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say something about peer-to-peer inference.")},
	})
	if err != nil {
		t.Fatalf("paid call: %v", err)
	}
	cost := costOf(t, resp.Usage.RawJSON())
	if cost <= 0 {
		t.Fatalf("call cost %d µcr", cost)
	}
	want := creditsText(5_000_000 - cost)
	deadline := time.Now().Add(20 * time.Second)
	for {
		run("reload", chromedp.Navigate(m.SettleURL+"/"))
		got := text(byID("balance"))
		if got == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("balance = %s; want %s (5.00 less the call's %d µcr)", got, want, cost)
		}
		time.Sleep(300 * time.Millisecond)
	}
	shot(t, ctx, dir, "balance.png")

	// Register a cloud node against an OpenAI-compatible upstream (here
	// the mesh's synthetic engine); its token is never shown again.
	token := "sk-browser-test-0123456789"
	run("register a cloud node",
		chromedp.Navigate(m.SettleURL+"/#nodes"),
		chromedp.SendKeys(byID("cloud-base-url"), m.EngineURLs[0]),
		chromedp.SendKeys(byID("cloud-api-token"), token),
		chromedp.SendKeys(byID("cloud-models"), "synthetic-1"),
		chromedp.Click(byID("register-cloud-node")))
	waitText(chromedp.CSS(`.notice`), "registered")
	html, err := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("html")))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(html, token) {
		t.Fatal("the page shows the cloud node's token")
	}
	if !strings.Contains(html, "data-cloud-id=") {
		t.Fatal("the cloud node is not listed")
	}
	// The hosted node starts, announces, and shows under My nodes as serving.
	deadline = time.Now().Add(30 * time.Second)
	for !strings.Contains(html, `class="status serving"`) {
		if time.Now().After(deadline) {
			t.Fatalf("the cloud node never shows as serving:\n%s", html)
		}
		time.Sleep(300 * time.Millisecond)
		run("reload", chromedp.Navigate(m.SettleURL+"/"))
		if html, err = chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("html"))); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Contains(html, token) {
		t.Fatal("the page shows the cloud node's token")
	}
	run("scroll", chromedp.ScrollIntoView(chromedp.CSS("#nodes")))
	shot(t, ctx, dir, "nodes.png")

	// Revoke the key: the very next call is refused, though the gateway
	// would trust its cached check for an hour.
	id := "key_" + ledger.KeyHash(key)[:16]
	run("revoke the key",
		chromedp.Navigate(m.SettleURL+"/#keys"),
		chromedp.Reload(), // a change of fragment alone does not load the page again
		chromedp.Click(chromedp.CSS(`tr[data-key-id="`+id+`"] [data-testid="revoke-key"]`)))
	waitText(chromedp.CSS(`.notice`), "is revoked")
	_, err = c.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model:    "synthetic-1",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Still there?")},
	})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusUnauthorized {
		t.Fatalf("call with the revoked key: %v; want 401", err)
	}

	// Sign out: back to sign-up and sign-in.
	run("sign out", chromedp.Click(byID("signout")), chromedp.WaitVisible(byID("signin-key")))
	run("network", chromedp.WaitVisible(byID("network")), chromedp.WaitVisible(byID("bounties")))
	shot(t, ctx, dir, "signed-out.png")

	// Sign in again with the first key.
	run("sign in",
		chromedp.SendKeys(byID("signin-key"), first),
		chromedp.Click(byID("signin")))
	if b := text(byID("balance")); b != want {
		t.Fatalf("balance after signing in again = %q; want %s", b, want)
	}
}

// creditsText is the dashboard's display of µcr (settlement.displayCredits).
func creditsText(ucr int64) string {
	s := strconv.FormatFloat(float64(ucr)/1e6, 'f', 6, 64)
	s = strings.TrimRight(s, "0")
	if i := strings.IndexByte(s, '.'); len(s)-i-1 < 2 {
		s += strings.Repeat("0", 2-(len(s)-i-1))
	}
	return s
}

// A revoked key stops at once on every gateway, though each trusts a
// checked key for an hour; the account's other keys keep working.
func TestRevokedKeyStopsAtOnceOnEveryGateway(t *testing.T) {
	hour := func(c *gateway.Config) { c.AuthTTL = time.Hour }
	m := startMeshWith(t, launch.MeshOptions{Nodes: 1, Gateway: func(g *launch.GatewayOptions) { g.Tune = hour }})
	second := startGateway(t, m, hour)
	waitListed(t, second, m.DemoKey, "synthetic-1")

	// A second key for the demo account.
	req, _ := http.NewRequest(http.MethodPost, m.SettleURL+"/v1/keys", strings.NewReader(`{"name":"ci"}`))
	req.Header.Set("Authorization", "Bearer "+m.DemoKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var created struct {
		APIKey string `json:"api_key"`
		ID     string `json:"id"`
	}
	err = json.NewDecoder(resp.Body).Decode(&created)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /v1/keys = %d, %v", resp.StatusCode, err)
	}
	call := func(gw, key string) int {
		res, err := callOnce(gw, key, "synthetic-1")
		if err != nil {
			t.Fatalf("call on %s: %v", gw, err)
		}
		return res.status
	}
	for _, gw := range []string{m.GatewayURL, second} {
		if code := call(gw, created.APIKey); code != http.StatusOK {
			t.Fatalf("call with the new key on %s = %d", gw, code)
		}
	}
	req, _ = http.NewRequest(http.MethodDelete, m.SettleURL+"/v1/keys/"+created.ID, nil)
	req.Header.Set("Authorization", "Bearer "+m.DemoKey)
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("DELETE /v1/keys/%s = %v, %v", created.ID, resp, err)
	}
	resp.Body.Close()
	for _, gw := range []string{m.GatewayURL, second} {
		if code := call(gw, created.APIKey); code != http.StatusUnauthorized {
			t.Fatalf("call with the revoked key on %s = %d; want 401 at once", gw, code)
		}
		if code := call(gw, m.DemoKey); code != http.StatusOK {
			t.Fatalf("the account's other key on %s = %d", gw, code)
		}
	}

	// A node's key cannot pay for calls, on any gateway.
	req, _ = http.NewRequest(http.MethodPost, m.SettleURL+"/v1/keys", strings.NewReader(`{"name":"gpu box","scope":"node"}`))
	req.Header.Set("Authorization", "Bearer "+m.DemoKey)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var nodeKey struct {
		APIKey string `json:"api_key"`
		Scope  string `json:"scope"`
	}
	err = json.NewDecoder(resp.Body).Decode(&nodeKey)
	resp.Body.Close()
	if err != nil || nodeKey.Scope != "node" {
		t.Fatalf("node key: %+v, %v", nodeKey, err)
	}
	for _, gw := range []string{m.GatewayURL, second} {
		res, err := callOnce(gw, nodeKey.APIKey, "synthetic-1")
		if err != nil || res.status != http.StatusForbidden || !strings.Contains(res.body, `"key_scope"`) {
			t.Fatalf("a call paid with a node's key on %s = %+v, %v; want 403 key_scope", gw, res, err)
		}
	}
}
