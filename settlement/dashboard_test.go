package settlement

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenrouter/tokenrouter/internal/testkit"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// browser is a person at the dashboard: a cookie jar that does not follow
// redirects by itself, so each step is seen.
type browser struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newBrowser(t *testing.T, base string) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, base: base, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

func (b *browser) do(req *http.Request) (*http.Response, string) {
	b.t.Helper()
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func (b *browser) get(path string) (*http.Response, string) {
	b.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, b.base+path, nil)
	return b.do(req)
}

// getHTML is get as a browser asks: for HTML.
func (b *browser) getHTML(path string) (*http.Response, string) {
	b.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, b.base+path, nil)
	req.Header.Set("Accept", "text/html,application/xhtml+xml")
	return b.do(req)
}

// post sends a form; csrf "" leaves the token out.
func (b *browser) post(path, csrf string, form url.Values) (*http.Response, string) {
	b.t.Helper()
	if form == nil {
		form = url.Values{}
	}
	if csrf != "" {
		form.Set("csrf", csrf)
	}
	req, _ := http.NewRequest(http.MethodPost, b.base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return b.do(req)
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// token reads the CSRF token of the page at path.
func (b *browser) token(path string) string {
	b.t.Helper()
	_, body := b.get(path)
	m := csrfField.FindStringSubmatch(body)
	if m == nil {
		b.t.Fatalf("no CSRF token on %s:\n%s", path, body)
	}
	return m[1]
}

var shownKey = regexp.MustCompile(`data-testid="api-key"[^>]*>(trk_[a-z0-9]+)<`)

// signup signs up through the form and returns the key shown once.
func (b *browser) signup() string {
	b.t.Helper()
	resp, body := b.post("/signup", b.token("/"), nil)
	if resp.StatusCode != http.StatusSeeOther {
		b.t.Fatalf("POST /signup = %d:\n%s", resp.StatusCode, body)
	}
	_, body = b.get("/")
	m := shownKey.FindStringSubmatch(body)
	if m == nil {
		b.t.Fatalf("no API key shown after sign-up:\n%s", body)
	}
	return m[1]
}

func countAccounts(t *testing.T, led *ledger.Ledger) int {
	t.Helper()
	b, err := led.Balances()
	if err != nil {
		t.Fatal(err)
	}
	return len(b)
}

func TestDashboardSignUpSignInSignOut(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.SignupLimit = 0 })
	b := newBrowser(t, f.srv.URL)

	resp, body := b.get("/")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `data-testid="signup"`) || !strings.Contains(body, `data-testid="signin-key"`) {
		t.Fatalf("GET / = %d, no sign-up or sign-in:\n%s", resp.StatusCode, body)
	}
	for _, h := range []string{"Content-Security-Policy", "X-Content-Type-Options", "Cache-Control"} {
		if resp.Header.Get(h) == "" {
			t.Errorf("no %s header", h)
		}
	}
	for _, outside := range []string{`src="http`, `href="http`, `src="//`, `href="//`, `url(http`} {
		if strings.Contains(body, outside) {
			t.Errorf("the page loads something from outside (%s):\n%s", outside, body)
		}
	}

	key := b.signup()
	var session *http.Cookie
	for _, c := range b.c.Jar.Cookies(mustURL(t, f.srv.URL)) {
		if c.Name == sessionCookie {
			session = c
		}
	}
	if session == nil {
		t.Fatal("no session cookie after sign-up")
	}
	// The jar hides the attributes: read them off a fresh sign-in's Set-Cookie.
	b2 := newBrowser(t, f.srv.URL)
	resp, _ = b2.post("/signin", b2.token("/"), url.Values{"api_key": {key}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("POST /signin = %d", resp.StatusCode)
	}
	set := strings.Join(resp.Header.Values("Set-Cookie"), "\n")
	if !strings.Contains(set, sessionCookie+"=") || !strings.Contains(set, "HttpOnly") || !strings.Contains(set, "SameSite=Strict") || strings.Contains(set, "Secure") {
		t.Fatalf("session cookie over http = %q; want HttpOnly, SameSite=Strict, not Secure", set)
	}
	if strings.Contains(set, key) {
		t.Fatal("the API key is in a cookie")
	}

	// The dashboard shows the balance, and the key only once.
	_, body = b2.get("/")
	if !strings.Contains(body, `data-testid="balance">5.00<`) {
		t.Fatalf("no balance 5.00:\n%s", body)
	}
	if strings.Contains(body, key) {
		t.Fatal("the sign-in page shows the key again")
	}
	_, body = b.get("/")
	if strings.Contains(body, key) || strings.Contains(body, `data-testid="api-key"`) {
		t.Fatal("the key is shown a second time")
	}
	for _, id := range []string{"create-key", "register-node", "register-cloud-node", "bounties", "network", "balance"} {
		if !strings.Contains(body, `data-testid="`+id+`"`) {
			t.Errorf("no data-testid %q on the dashboard", id)
		}
	}

	// Sign out ends the session on the server: the old cookie is worthless.
	resp, _ = b.post("/signout", b.token("/"), nil)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("POST /signout = %d", resp.StatusCode)
	}
	replay := newBrowser(t, f.srv.URL)
	replay.c.Jar.SetCookies(mustURL(t, f.srv.URL), []*http.Cookie{session})
	if _, body := replay.get("/"); strings.Contains(body, `data-testid="balance"`) || !strings.Contains(body, `data-testid="signup"`) {
		t.Fatal("a signed-out session cookie still shows the account")
	}

	// A wrong key does not sign in, and is not echoed.
	b3 := newBrowser(t, f.srv.URL)
	resp, body = b3.post("/signin", b3.token("/"), url.Values{"api_key": {"trk_wrong<b>"}})
	if resp.StatusCode != http.StatusUnauthorized || strings.Contains(body, "trk_wrong") {
		t.Fatalf("sign-in with a wrong key = %d:\n%s", resp.StatusCode, body)
	}
}

func TestDashboardSecureCookieOverHTTPS(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.SignupLimit = 0 })
	key, _ := f.signup(t)
	b := newBrowser(t, f.srv.URL)
	tok := b.token("/")
	form := url.Values{"api_key": {key}, "csrf": {tok}}
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/signin", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Forwarded-Proto", "https") // a TLS-terminating proxy in front
	resp, _ := b.do(req)
	if set := strings.Join(resp.Header.Values("Set-Cookie"), "\n"); !strings.Contains(set, "Secure") {
		t.Fatalf("session cookie over https = %q; want Secure", set)
	}
}

// Every form refuses a post without its token, a wrong token and a
// cross-site post, and changes nothing.
func TestDashboardCSRF(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.SignupLimit = 0 })
	b := newBrowser(t, f.srv.URL)
	key := b.signup()
	acct, err := f.led.AccountByKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyID := f.led.APIKeys(acct)[0].ID
	good := b.token("/")

	accounts := countAccounts(t, f.led)
	forms := []string{"/signup", "/signin", "/signout", "/keys", "/keys/" + keyID + "/revoke", "/nodes/register", "/nodes/cloud", "/nodes/cloud/x/delete"}
	for _, path := range forms {
		for _, tok := range []string{"", "not-the-token"} {
			resp, _ := b.post(path, tok, url.Values{"api_key": {key}, "name": {"sneaky"}})
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("POST %s with token %q = %d; want 403", path, tok, resp.StatusCode)
			}
		}
		// A cross-site form post is refused even with the right token.
		form := url.Values{"csrf": {good}, "name": {"sneaky"}}
		req, _ := http.NewRequest(http.MethodPost, f.srv.URL+path, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Sec-Fetch-Site", "cross-site")
		if resp, _ := b.do(req); resp.StatusCode != http.StatusForbidden {
			t.Errorf("cross-site POST %s = %d; want 403", path, resp.StatusCode)
		}
	}
	if got := f.led.APIKeys(acct); len(got) != 1 {
		t.Fatalf("keys after refused posts = %+v", got)
	}
	if n := countAccounts(t, f.led); n != accounts {
		t.Fatalf("accounts %d -> %d after refused sign-ups", accounts, n)
	}
	if _, body := b.get("/"); !strings.Contains(body, `data-testid="balance"`) {
		t.Fatal("a refused sign-out signed out")
	}
	// Before sign-in: a browser with its own double-submit cookie, posting
	// the sign-up and sign-in forms without the token or with a wrong one.
	fresh := newBrowser(t, f.srv.URL)
	fresh.token("/") // sets the cookie
	for _, path := range []string{"/signup", "/signin"} {
		for _, tok := range []string{"", "not-the-token"} {
			if resp, _ := fresh.post(path, tok, url.Values{"api_key": {key}}); resp.StatusCode != http.StatusForbidden {
				t.Errorf("signed out, POST %s with token %q = %d; want 403", path, tok, resp.StatusCode)
			}
		}
	}
	if n := countAccounts(t, f.led); n != accounts {
		t.Fatalf("accounts %d -> %d after refused sign-ups", accounts, n)
	}
	// The session's token is not the sign-up form's: a token from one
	// browser is no good in another.
	other := newBrowser(t, f.srv.URL)
	other.get("/")
	if resp, _ := other.post("/signup", good, nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("sign-up with another browser's token = %d", resp.StatusCode)
	}
}

// Keys made and revoked on the dashboard; revoking tells every gateway.
func TestDashboardKeys(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.SignupLimit = 0 })
	// A gateway's view of revocations: it follows the topic.
	topic, err := p2p.JoinRevokedTopic(f.gw, f.settle.ID(), nil)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Cancel()

	b := newBrowser(t, f.srv.URL)
	first := b.signup()
	resp, _ := b.post("/keys", b.token("/"), url.Values{"name": {"laptop"}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("POST /keys = %d", resp.StatusCode)
	}
	_, body := b.get("/")
	m := shownKey.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("the new key is not shown:\n%s", body)
	}
	second := m[1]
	acct, _ := f.led.AccountByKey(first)
	if a2, err := f.led.AccountByKey(second); err != nil || a2 != acct {
		t.Fatalf("new key's account = %q, %v", a2, err)
	}
	_, body = b.get("/")
	if strings.Contains(body, second) || strings.Contains(body, first) {
		t.Fatal("the key list shows whole keys")
	}
	if !strings.Contains(body, second[:8]+"…"+second[len(second)-4:]) {
		t.Fatalf("the key list does not show the new key's prefix:\n%s", body)
	}

	// Revoke the second key: the ledger drops it and the gateways hear.
	var id string
	for _, k := range f.led.APIKeys(acct) {
		if k.Name == "laptop" {
			id = k.ID
		}
	}
	testkit.WaitFor(t, 10*time.Second, "the settlement peer to see the gateway's subscription", func() bool {
		return slices.Contains(f.settle.PubSub.ListPeers(p2p.TopicRevoked), f.gw.ID())
	})
	resp, _ = b.post("/keys/"+id+"/revoke", b.token("/"), nil)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("revoke = %d", resp.StatusCode)
	}
	if _, err := f.led.AccountByKey(second); err == nil {
		t.Fatal("the revoked key still works")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	msg, err := sub.Next(ctx)
	if err != nil {
		t.Fatalf("no revocation on gossip: %v", err)
	}
	r, ok := msg.ValidatorData.(*p2p.KeyRevocation)
	if !ok || len(r.KeyHashes) != 1 || r.KeyHashes[0] != ledger.KeyHash(second) {
		t.Fatalf("revocation = %+v", msg.ValidatorData)
	}
	if strings.Contains(string(msg.Data), second) || strings.Contains(string(msg.Data), acct) {
		t.Fatal("the revocation names the key or the account")
	}

	// Revoking the key the session signed in with ends the session (a
	// spare key first: the account's last key stays).
	firstID := f.led.APIKeys(acct)[0].ID
	b.post("/keys", b.token("/"), url.Values{"name": {"spare"}})
	b.post("/keys/"+firstID+"/revoke", b.token("/"), nil)
	if _, err := f.led.AccountByKey(first); err == nil {
		t.Fatal("the signed-in key was not revoked")
	}
	if _, body := b.get("/"); strings.Contains(body, `data-testid="balance"`) {
		t.Fatal("the session outlived the key it signed in with")
	}
}

// One account never sees or changes another's keys, nodes or transactions.
func TestDashboardAccountIsolation(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.SignupLimit = 0 })
	alice, bob := newBrowser(t, f.srv.URL), newBrowser(t, f.srv.URL)
	aliceKey, bobKey := alice.signup(), bob.signup()
	aliceAcct, _ := f.led.AccountByKey(aliceKey)
	bobAcct, _ := f.led.AccountByKey(bobKey)
	aliceKeyID := f.led.APIKeys(aliceAcct)[0].ID

	_, body := bob.get("/")
	for _, secret := range []string{aliceAcct, aliceKeyID, aliceKey} {
		if strings.Contains(body, secret) {
			t.Fatalf("bob's dashboard shows alice's %q", secret)
		}
	}
	if !strings.Contains(body, bobAcct) {
		t.Fatal("bob's dashboard does not show his account")
	}
	// Bob tries to revoke alice's key by its id.
	bob.post("/keys/"+aliceKeyID+"/revoke", bob.token("/"), nil)
	if a, err := f.led.AccountByKey(aliceKey); err != nil || a != aliceAcct {
		t.Fatalf("bob revoked alice's key: %q, %v", a, err)
	}
	if _, body := bob.get("/"); !strings.Contains(body, "no such key on your account") {
		t.Fatalf("bob is not told the key is not his:\n%s", body)
	}
	// And over the JSON API.
	req, _ := http.NewRequest(http.MethodDelete, f.srv.URL+"/v1/keys/"+aliceKeyID, nil)
	req.Header.Set("Authorization", "Bearer "+bobKey)
	resp, _ := bob.do(req)
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("DELETE another's key = %d", resp.StatusCode)
	}
	if _, err := f.led.AccountByKey(aliceKey); err != nil {
		t.Fatal("alice's key was revoked by bob")
	}
}

// Whatever a person types comes back escaped.
func TestDashboardEscapes(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.SignupLimit = 0 })
	b := newBrowser(t, f.srv.URL)
	b.signup()
	evil := `<script>alert("x")</script><img src=x onerror=alert(1)>`
	b.post("/keys", b.token("/"), url.Values{"name": {evil}})
	_, body := b.get("/")
	if strings.Contains(body, "<script>alert") || strings.Contains(body, "<img src=x") {
		t.Fatalf("a key name is not escaped:\n%s", body)
	}
	if !strings.Contains(body, "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") {
		t.Fatalf("the key name is not shown escaped:\n%s", body)
	}
	resp, body := b.getHTML("/%3Cscript%3Ealert(1)%3C/script%3E")
	if resp.StatusCode != http.StatusNotFound || strings.Contains(body, "<script>alert") || !strings.Contains(body, "&lt;script&gt;") {
		t.Fatalf("404 page = %d, echoes the path raw:\n%s", resp.StatusCode, body)
	}
}

// The JSON API for keys: list (prefixes only), create (shown once), revoke.
func TestHTTPKeys(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.SignupLimit = 0 })
	key, acct := f.signup(t)
	send := func(method, path, body string) (int, []byte) {
		req, _ := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	code, body := send(http.MethodPost, "/v1/keys", `{"name":"ci"}`)
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/keys = %d %s", code, body)
	}
	var created struct {
		APIKey string `json:"api_key"`
		ledger.APIKeyInfo
	}
	if err := json.Unmarshal(body, &created); err != nil || !strings.HasPrefix(created.APIKey, "trk_") || created.Name != "ci" {
		t.Fatalf("created = %s (%v)", body, err)
	}
	code, body = send(http.MethodGet, "/v1/keys", "")
	if code != http.StatusOK || strings.Contains(string(body), created.APIKey) || strings.Contains(string(body), key) {
		t.Fatalf("GET /v1/keys = %d %s", code, body)
	}
	var list keysResponse
	json.Unmarshal(body, &list)
	if list.Account != acct || len(list.Data) != 2 {
		t.Fatalf("list = %+v", list)
	}
	if code, body := send(http.MethodPost, "/v1/keys", `{"name":"`+strings.Repeat("n", ledger.MaxKeyName+1)+`"}`); code != http.StatusBadRequest {
		t.Fatalf("POST /v1/keys long name = %d %s", code, body)
	} else if e := decodeOpenAIError(t, body); e.Error.Param == nil || *e.Error.Param != "name" {
		t.Fatalf("error = %+v", e)
	}
	if code, body := send(http.MethodDelete, "/v1/keys/"+created.ID, ""); code != http.StatusOK {
		t.Fatalf("DELETE = %d %s", code, body)
	}
	if code, _ := send(http.MethodDelete, "/v1/keys/"+created.ID, ""); code != http.StatusNotFound {
		t.Fatalf("second DELETE = %d", code)
	}
	if _, err := f.led.AccountByKey(created.APIKey); err == nil {
		t.Fatal("revoked key still resolves")
	}
}

// The bounty board and the network are public pages, readable without
// JavaScript or an account.
func TestDashboardPublicPages(t *testing.T) {
	f := newFixture(t, nil)
	b := newBrowser(t, f.srv.URL)
	for _, p := range []struct{ path, testid string }{{"/bounties", "bounties"}, {"/network", "network"}} {
		resp, body := b.get(p.path)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, `data-testid="`+p.testid+`"`) {
			t.Fatalf("GET %s = %d:\n%s", p.path, resp.StatusCode, body)
		}
	}
	// Unknown /v1 paths still answer in OpenAI's shape.
	code, body := f.get(t, "/v1/nope", "")
	if e := decodeOpenAIError(t, body); code != http.StatusNotFound || e.Error.Code == nil || *e.Error.Code != "not_found" {
		t.Fatalf("GET /v1/nope = %d %s", code, body)
	}
}

func TestDisplayCredits(t *testing.T) {
	for ucr, want := range map[int64]string{5_000_000: "5.00", 4_999_877: "4.999877", 0: "0.00", 120_000: "0.12", -1_500_000: "-1.50", 1: "0.000001"} {
		if got := displayCredits(ucr); got != want {
			t.Errorf("displayCredits(%d) = %q; want %q", ucr, got, want)
		}
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// Register a node: a key for it and the command line, key filled in, once.
func TestDashboardRegisterNode(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.SignupLimit = 0 })
	b := newBrowser(t, f.srv.URL)
	b.signup()
	resp, _ := b.post("/nodes/register", b.token("/"), nil)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("POST /nodes/register = %d", resp.StatusCode)
	}
	_, body := b.get("/")
	key := shownKey.FindStringSubmatch(body)
	cmd := regexp.MustCompile(`data-testid="node-command">([^<]+)<`).FindStringSubmatch(body)
	if key == nil || cmd == nil {
		t.Fatalf("no key or command line:\n%s", body)
	}
	for _, want := range []string{"TOKENROUTER_ACCOUNT_KEY=" + key[1], "tokenrouter node", "--platform " + f.settle.ID().String(), "--bootstrap /ip4/", "--upstream http"} {
		if !strings.Contains(cmd[1], want) {
			t.Errorf("command %q lacks %q", cmd[1], want)
		}
	}
	if acct, err := f.led.AccountByKey(key[1]); err != nil || !slices.ContainsFunc(f.led.APIKeys(acct), func(k ledger.APIKeyInfo) bool { return k.Name == "node" }) {
		t.Fatalf("the node's key is not a key of the account: %v", err)
	}
	if _, body := b.get("/"); strings.Contains(body, key[1]) {
		t.Fatal("the node's key is shown twice")
	}
}

func TestTxRows(t *testing.T) {
	at := time.Unix(1_800_000_000, 0)
	const me = "acct_me"
	txs := []ledger.TxRecord{ // newest first, as Transactions lists them
		{Key: "call/gw/req_2", From: "acct_other", To: me, Amount: 80, Kind: ledger.KindCall, Time: at},
		{Key: "call/gw/req_2", From: ledger.AccountBountyPool, To: me, Amount: 5, Kind: ledger.KindBounty, Time: at},
		{Key: "call/gw/req_1", From: me, To: "acct_node", Amount: 800, Kind: ledger.KindCall, Time: at},
		{Key: "call/gw/req_1", From: me, To: ledger.AccountPlatform, Amount: 200, Kind: ledger.KindCall, Time: at},
		{Key: "grant:" + me, From: ledger.AccountMint, To: me, Amount: 5_000_000, Kind: ledger.KindGrant, Time: at},
	}
	got := txRows(me, txs)
	want := []struct {
		what, ref string
		amount    int64
		legs      int
	}{{"payout", "req_2", 80, 1}, {"bounty", "req_2", 5, 1}, {"call", "req_1", -1000, 2}, {"starting credit", "", 5_000_000, 1}}
	if len(got) != len(want) {
		t.Fatalf("rows = %+v", got)
	}
	for i, w := range want {
		if g := got[i]; g.What != w.what || g.Ref != w.ref || g.Amount != w.amount || g.Legs != w.legs {
			t.Errorf("row %d = %+v; want %+v", i, g, w)
		}
	}
}

// A cloud-account node registered from the dashboard: what was typed comes
// back escaped, the token never comes back, and another account cannot
// delete the node.
func TestDashboardCloudNode(t *testing.T) {
	token := randomToken()
	eng := newAuthEngine(t, token)
	p, err := startCloudPeer(t, t.TempDir(), newHost(t).FullAddrs()[0], "", io.Discard, true)
	if err != nil {
		t.Fatal(err)
	}
	key, account := p.signup(t)
	b := newBrowser(t, p.url)
	b.post("/signin", b.token("/"), url.Values{"api_key": {key}})
	register := func(form url.Values) string {
		t.Helper()
		if resp, _ := b.post("/nodes/cloud", b.token("/"), form); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("POST /nodes/cloud = %d", resp.StatusCode)
		}
		_, body := b.get("/")
		if strings.Contains(body, token) {
			t.Fatalf("the page shows the token:\n%s", body)
		}
		return body
	}
	body := register(url.Values{"base_url": {eng.baseURL()}, "api_token": {token}, "models": {`<script>alert(1)</script>`}})
	if !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") || strings.Contains(body, "<script>alert") {
		t.Fatalf("the model name is not escaped:\n%s", body)
	}
	body = register(url.Values{"base_url": {eng.baseURL()}, "api_token": {"sk-wrong-" + token[8:]}, "models": {""}})
	if !strings.Contains(body, "refused the API token") || strings.Contains(body, token[8:]) {
		t.Fatalf("wrong token: no error, or the page quotes it:\n%s", body)
	}
	body = register(url.Values{"base_url": {eng.baseURL()}, "api_token": {token}, "models": {""}, "capacity": {"2"}})
	nodes := p.cloudNodes(t, key)
	if len(nodes) != 1 || !strings.Contains(body, "registered") || !strings.Contains(body, `data-cloud-id="`+nodes[0].ID+`"`) {
		t.Fatalf("cloud nodes %+v; page:\n%s", nodes, body)
	}
	if nodes[0].Capacity != 2 || nodes[0].Account != account {
		t.Fatalf("node = %+v", nodes[0])
	}
	// Another account cannot delete it.
	mallory := newBrowser(t, p.url)
	mallory.signup()
	mallory.post("/nodes/cloud/"+nodes[0].ID+"/delete", mallory.token("/"), nil)
	if _, body := mallory.get("/"); !strings.Contains(body, "no such cloud node on your account") || strings.Contains(body, nodes[0].ID) {
		t.Fatalf("mallory's page:\n%s", body)
	}
	if got := p.cloudNodes(t, key); len(got) != 1 {
		t.Fatal("another account deleted the cloud node")
	}
	// Its owner can.
	b.post("/nodes/cloud/"+nodes[0].ID+"/delete", b.token("/"), nil)
	if got := p.cloudNodes(t, key); len(got) != 0 {
		t.Fatalf("the owner could not delete it: %+v", got)
	}
}

// A gateway's report of the calls it passed a node over for reaches the
// node's operator: GET /v1/nodes and the dashboard.
func TestLostCallsReachTheOperator(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.SignupLimit = 0 })
	opKey, _ := f.signup(t)
	_, consumer := f.signup(t)
	f.register(t, opKey)
	node := f.node.ID().String()
	f.s.rep.Announced(announce(node, "llama-3-8b"), time.Now())
	report := &p2p.SettleRequest{Op: p2p.OpReport, Reports: []p2p.OutcomeReport{{Node: node, Model: "llama-3-8b",
		PassedOver: map[string]uint32{p2p.PassedFull: 7, p2p.PassedFloor: 2}}}}
	// A peer without a grant may not speak about nodes.
	if _, err := f.call(t, f.gw, report); err != nil {
		t.Fatal(err)
	}
	if lost := f.s.rep.Node(node, time.Now())[0].Lost; len(lost) != 0 {
		t.Fatalf("an ungranted peer's report counted: %v", lost)
	}
	f.grant(t, f.gw, consumer)
	if _, err := f.call(t, f.gw, report); err != nil {
		t.Fatal(err)
	}
	code, body := f.get(t, "/v1/nodes", opKey)
	var nodes struct {
		Data []nodeView `json:"data"`
	}
	if err := json.Unmarshal(body, &nodes); code != http.StatusOK || err != nil || len(nodes.Data) != 1 || len(nodes.Data[0].Models) != 1 {
		t.Fatalf("GET /v1/nodes = %d %s", code, body)
	}
	if lost := nodes.Data[0].Models[0].Lost; lost[p2p.PassedFull] != 7 || lost[p2p.PassedFloor] != 2 {
		t.Fatalf("lost calls = %v", lost)
	}
	b := newBrowser(t, f.srv.URL)
	b.post("/signin", b.token("/"), url.Values{"api_key": {opKey}})
	if _, page := b.get("/"); !strings.Contains(page, "2 below the 5 tok/s floor, 7 while full") {
		t.Fatalf("the dashboard does not show the lost calls:\n%s", page)
	}
}

// A node's key links the node and reads the account; it cannot sign in,
// manage keys or cloud nodes, or pay for calls. The account's last key
// that can do those stays.
func TestNodeKeyScope(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.SignupLimit = 0 })
	b := newBrowser(t, f.srv.URL)
	owner := b.signup()
	b.post("/nodes/register", b.token("/"), nil)
	_, body := b.get("/")
	nodeKey := shownKey.FindStringSubmatch(body)[1]
	acct, _ := f.led.AccountByKey(owner)

	// It links a node and reads the account.
	f.register(t, nodeKey)
	if got := f.led.Nodes(acct); len(got) != 1 {
		t.Fatalf("the node key did not link the node: %v", got)
	}
	if code, body := f.get(t, "/v1/account", nodeKey); code != http.StatusOK {
		t.Fatalf("GET /v1/account with a node key = %d %s", code, body)
	}
	resp, err := f.call(t, f.node, &p2p.SettleRequest{Op: p2p.OpAccountView, APIKey: nodeKey})
	if err != nil || resp.Account == nil || resp.Account.Account != acct || resp.Grant != nil {
		t.Fatalf("account view with a node key = %+v, %v", resp, err)
	}
	// It cannot pay for calls: no grant for it.
	if _, err := f.call(t, f.gw, &p2p.SettleRequest{Op: p2p.OpAccount, APIKey: nodeKey}); err == nil {
		t.Fatal("a node key got a grant")
	} else {
		wantRPCCode(t, err, p2p.CodeKeyScope)
	}
	// Nor manage keys or cloud nodes, nor sign in.
	for _, req := range []struct{ method, path, body string }{
		{http.MethodGet, "/v1/keys", ""}, {http.MethodPost, "/v1/keys", `{"name":"x"}`},
		{http.MethodDelete, "/v1/keys/" + f.led.APIKeys(acct)[0].ID, ""}, {http.MethodPost, "/v1/nodes/cloud", `{}`},
	} {
		r, _ := http.NewRequest(req.method, f.srv.URL+req.path, strings.NewReader(req.body))
		r.Header.Set("Authorization", "Bearer "+nodeKey)
		resp, body := b.do(r)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "key_scope") {
			t.Errorf("%s %s with a node key = %d %s", req.method, req.path, resp.StatusCode, body)
		}
	}
	nb := newBrowser(t, f.srv.URL)
	if resp, body := nb.post("/signin", nb.token("/"), url.Values{"api_key": {nodeKey}}); resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "a node") {
		t.Fatalf("sign-in with a node key = %d", resp.StatusCode)
	}
	// The owner's only account key cannot be revoked; a node key can.
	ownerID := ""
	for _, k := range f.led.APIKeys(acct) {
		if k.Scope == ledger.ScopeAccount {
			ownerID = k.ID
		}
	}
	b.post("/keys/"+ownerID+"/revoke", b.token("/"), nil)
	if _, err := f.led.AccountByKey(owner); err != nil {
		t.Fatal("the account's last key was revoked")
	}
	if _, body := b.get("/"); !strings.Contains(body, "last key") {
		t.Fatalf("no word on the last key:\n%s", body)
	}
}

// One account's sign-ins end its own oldest sessions past the cap, never
// another account's; expired sessions are swept.
func TestSessionsBounded(t *testing.T) {
	ss := newSessions()
	r := httptest.NewRequest(http.MethodPost, "/signin", nil)
	now := time.Unix(1_800_000_000, 0)
	other := ss.start(httptest.NewRecorder(), r, "acct_other", "h2", now)
	var mine []*session
	for i := range maxAccountSessions + 4 {
		mine = append(mine, ss.start(httptest.NewRecorder(), r, "acct_me", "h1", now.Add(time.Duration(i)*time.Second)))
	}
	ss.mu.Lock()
	n, otherKept, oldestKept, newestKept := len(ss.byAccount["acct_me"]), ss.m[other.id] != nil, ss.m[mine[0].id] != nil, ss.m[mine[len(mine)-1].id] != nil
	ss.mu.Unlock()
	if n != maxAccountSessions || !otherKept || oldestKept || !newestKept {
		t.Fatalf("sessions: mine %d (cap %d), other kept %v, oldest kept %v, newest kept %v", n, maxAccountSessions, otherKept, oldestKept, newestKept)
	}
	// A sign-in after everything expired sweeps the rest away.
	ss.start(httptest.NewRecorder(), r, "acct_late", "h3", now.Add(sessionLife+time.Hour))
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.m) != 1 || len(ss.byAccount) != 1 {
		t.Fatalf("after the sweep: %d sessions, %d accounts", len(ss.m), len(ss.byAccount))
	}
}

// The dashboard's sign-up shares POST /v1/accounts's per-address limit.
func TestDashboardSignupLimit(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.SignupLimit = 1 })
	f.signup(t) // the API's sign-up spends this address's one account
	b := newBrowser(t, f.srv.URL)
	accounts := countAccounts(t, f.led)
	resp, body := b.post("/signup", b.token("/"), nil)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "Too many accounts") {
		t.Fatalf("sign-up past the limit = %d:\n%s", resp.StatusCode, body)
	}
	if n := countAccounts(t, f.led); n != accounts {
		t.Fatalf("accounts %d -> %d past the limit", accounts, n)
	}
}
