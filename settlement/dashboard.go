package settlement

import (
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tokenrouter/tokenrouter/internal/openai"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// The dashboard: the settlement peer's `/`, for people (SPEC §7). Pages are
// rendered on the server and work without JavaScript; the little script
// there is (copying a key) only helps. Every asset is embedded: no outside
// CDN. Forms carry a CSRF token; sessions are HttpOnly, SameSite=Strict
// cookies (Secure over https).

//go:embed web
var webFiles embed.FS

var dashboardTmpl = template.Must(template.New("").Funcs(template.FuncMap{
	"credits": displayCredits,
	"pct":     func(f float64) string { return fmt.Sprintf("%.0f%%", 100*f) },
	"ms":      func(ms int64) string { return time.UnixMilli(ms).UTC().Format("2006-01-02 15:04") },
	"when":    func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05") },
	"div":     func(a, b int) float64 { return float64(a) / float64(b) },
	"lost":    lostText,
}).ParseFS(webFiles, "web/*.html"))

// displayCredits shows µcr as credits with at least two decimals and as
// many more as it takes to be exact: 5000000 is "5.00", 4999877 "4.999877".
func displayCredits(ucr int64) string {
	s := economy.FormatCredits(ucr) // "5.000000"
	dot := strings.IndexByte(s, '.')
	s = strings.TrimRight(s, "0")
	if len(s) < dot+3 {
		s += strings.Repeat("0", dot+3-len(s))
	}
	return s
}

// lostText says why a node lost calls: "7 while full, 2 below the floor".
func lostText(lost map[string]int64) string {
	var parts []string
	for _, why := range []struct{ key, words string }{
		{p2p.PassedParked, "parked (breaker open)"}, {p2p.PassedFloor, "below the 5 tok/s floor"}, {p2p.PassedFull, "while full"},
	} {
		if n := lost[why.key]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, why.words))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// maxFormBody bounds a dashboard form post.
const maxFormBody = 64 << 10

// dashboard registers the pages and form handlers on mux.
func (s *Settlement) dashboard(mux *http.ServeMux) {
	static, _ := fs.Sub(webFiles, "web/static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServer(http.FS(static))))
	mux.HandleFunc("GET /{$}", s.pageHome)
	mux.HandleFunc("GET /bounties", s.pagePublic("bounties"))
	mux.HandleFunc("GET /network", s.pagePublic("network"))
	cop := http.NewCrossOriginProtection() // refuses cross-site posts by Sec-Fetch-Site/Origin, before the token is even read
	post := func(pattern string, h func(http.ResponseWriter, *http.Request)) {
		mux.Handle("POST "+pattern, cop.Handler(http.HandlerFunc(h)))
	}
	post("/signup", s.formSignup)
	post("/signin", s.formSignin)
	post("/signout", s.signedIn(s.formSignout))
	post("/keys", s.signedIn(s.formCreateKey))
	post("/keys/{id}/revoke", s.signedIn(s.formRevokeKey))
	post("/nodes/register", s.signedIn(s.formRegisterNode))
	post("/nodes/cloud", s.signedIn(s.formCloudNode))
	post("/nodes/cloud/{id}/delete", s.signedIn(s.formDeleteCloudNode))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.Header.Get("Accept"), "text/html") { // an API client: OpenAI's error shape
			openai.WriteError(w, http.StatusNotFound, "invalid_request_error", "", "not_found", "no such endpoint: "+r.Method+" "+r.URL.Path)
			return
		}
		s.render(w, r, http.StatusNotFound, &page{Title: "Not found", Error: "There is no page at " + r.URL.Path + "."})
	})
}

// page is what the template renders.
type page struct {
	Title    string
	Only     string // a public page showing one section: "bounties" or "network"
	Session  *session
	CSRF     string // the form token: the session's, or before sign-in the double-submit one
	Flash    *flash
	Error    string
	Platform string

	Account  *p2p.AccountInfo
	Txs      []txRow
	Cursor   string
	Next     string
	Activity template.HTML // spend and earnings chart (SVG)
	Keys     []ledger.APIKeyInfo
	Nodes    []nodeRow
	CloudOn  bool
	Cloud    []CloudNode

	Public   bool // the network and the bounty board are filled in
	Bounties []economy.Bounty
	Pool     int64
	Network  []modelView
	Supply   template.HTML // supply and demand chart (SVG)
}

func (s *Settlement) render(w http.ResponseWriter, r *http.Request, code int, p *page) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-store") // balances and one-time keys stay out of caches
	p.Platform = s.cfg.Host.ID().String()
	if p.CSRF == "" && p.Session == nil {
		p.CSRF = preCSRF(w, r)
	}
	w.WriteHeader(code)
	if err := dashboardTmpl.ExecuteTemplate(w, "page", p); err != nil {
		s.log.Error("dashboard: render", "err", err)
	}
}

// pageHome is `/`: the whole dashboard when signed in, else sign-up and
// sign-in with the network and the bounty board.
func (s *Settlement) pageHome(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	p := &page{Title: "Token-Router"}
	s.publicData(p, now)
	sess := s.sessions.get(r, s.led, now)
	if sess == nil {
		s.render(w, r, http.StatusOK, p)
		return
	}
	p.Session, p.CSRF, p.Flash = sess, sess.csrf, s.sessions.takeFlash(sess)
	a, err := s.led.Account(sess.account)
	if err != nil {
		s.render(w, r, http.StatusInternalServerError, &page{Title: "Error", Error: "Your account is unavailable just now; try again."})
		return
	}
	p.Account = s.accountInfo(a)
	p.Cursor = r.URL.Query().Get("cursor")
	txs, next, err := s.led.Transactions(sess.account, p.Cursor, 20)
	if err != nil {
		p.Cursor, p.Error = "", "That page of transactions does not exist; showing the newest."
		txs, next, _ = s.led.Transactions(sess.account, "", 20)
	}
	p.Next = next
	p.Txs = txRows(sess.account, txs)
	p.Activity = s.activityChart(sess.account, now)
	p.Keys = s.led.APIKeys(sess.account)
	p.Nodes = s.nodeRows(sess.account, now)
	if s.cloud != nil {
		p.CloudOn, p.Cloud = true, s.cloud.list(sess.account)
	}
	s.render(w, r, http.StatusOK, p)
}

// pagePublic is a page of public information: the bounty board or the network.
func (s *Settlement) pagePublic(only string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p := &page{Title: "Token-Router: " + only, Only: only}
		s.publicData(p, time.Now())
		if sess := s.sessions.get(r, s.led, time.Now()); sess != nil {
			p.Session, p.CSRF = sess, sess.csrf
		}
		s.render(w, r, http.StatusOK, p)
	}
}

// publicData fills what anyone may see: the network and the bounty board.
func (s *Settlement) publicData(p *page, now time.Time) {
	p.Public = true
	p.Network = s.networkView(now)
	p.Supply = supplyChart(p.Network)
	s.bmu.RLock()
	if s.bounties != nil {
		p.Bounties = s.bounties.List
	}
	s.bmu.RUnlock()
	pool, _ := s.led.Account(ledger.AccountBountyPool)
	p.Pool = pool.Balance
}

// txRow is one transaction as the dashboard lists it: the transfers of
// one posting that moved the account's balance the same way (a call pays
// its provider and the platform in two; the payer sees one call).
type txRow struct {
	Time   time.Time
	What   string // call, payout, bounty, starting credit
	Ref    string
	Amount int64 // signed: what it did to the balance
	Legs   int   // transfers in the row
	key    string
}

// txRows groups the transfers of a page, newest first, into rows.
func txRows(account string, txs []ledger.TxRecord) []txRow {
	var out []txRow
	for _, t := range txs {
		row := describeTx(account, t)
		if n := len(out); n > 0 && out[n-1].key == t.Key && out[n-1].What == row.What {
			out[n-1].Amount += row.Amount
			out[n-1].Legs++
			continue
		}
		out = append(out, row)
	}
	return out
}

func describeTx(account string, t ledger.TxRecord) txRow {
	row := txRow{Time: t.Time, What: t.Kind, Ref: t.Key, Amount: t.Amount, Legs: 1, key: t.Key}
	if t.From == account {
		row.Amount = -t.Amount
	}
	switch {
	case t.Kind == ledger.KindGrant:
		row.What, row.Ref = "starting credit", ""
	case t.Kind == ledger.KindCall && t.From == account:
		row.What = "call"
	case t.Kind == ledger.KindCall:
		row.What = "payout"
	case t.Kind == ledger.KindBounty:
		row.What = "bounty"
	}
	if parts := strings.Split(row.Ref, "/"); len(parts) == 3 && parts[0] == "call" {
		row.Ref = parts[2] // call/<gateway>/<request id>: the request id is what the caller saw
	}
	return row
}

// nodeRow is one of the account's nodes.
type nodeRow struct {
	Node      string
	Status    string // serving, offline, or why the network refuses it
	Reason    string
	Disputes  int64
	Instances []instanceRow
}

type instanceRow struct {
	InstanceView
	FlapCut float64 // the share of payouts the anti-flapping rule withholds now
}

func (s *Settlement) nodeRows(account string, now time.Time) []nodeRow {
	var out []nodeRow
	for _, n := range s.led.Nodes(account) {
		row := nodeRow{Node: n, Status: "not seen yet", Disputes: s.Disputes("node", n)}
		for _, in := range s.rep.Node(n, now) {
			if row.Status == "not seen yet" {
				row.Status = "offline"
			}
			if in.Live {
				row.Status = "serving"
			}
			row.Instances = append(row.Instances, instanceRow{in, 1 - s.cfg.Flap.FlapFactor(in.SwitchedAt, now)})
		}
		if ref, ok := s.rep.Refusal(n, now); ok {
			row.Status, row.Reason = ref.Status, ref.Reason
		}
		out = append(out, row)
	}
	return out
}

// signedIn wraps a form handler: a live session and its CSRF token, or 403.
func (s *Settlement) signedIn(h func(http.ResponseWriter, *http.Request, *session)) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBody)
		sess := s.sessions.get(r, s.led, time.Now())
		if sess == nil {
			s.render(w, r, http.StatusUnauthorized, &page{Title: "Signed out", Error: "You are not signed in (or your session ended). Sign in again."})
			return
		}
		if !csrfOK(r, sess.csrf) {
			s.forbidden(w, r)
			return
		}
		h(w, r, sess)
	}
}

func (s *Settlement) forbidden(w http.ResponseWriter, r *http.Request) {
	s.render(w, r, http.StatusForbidden, &page{Title: "Refused",
		Error: "This form did not come from this dashboard, or it has expired. Reload the page and try again."})
}

// back sends the browser to a section of the dashboard after a form.
func back(w http.ResponseWriter, r *http.Request, section string) {
	http.Redirect(w, r, "/#"+section, http.StatusSeeOther)
}

func (s *Settlement) formSignup(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBody)
	if c, err := r.Cookie(csrfCookie); err != nil || !csrfOK(r, c.Value) {
		s.forbidden(w, r)
		return
	}
	a, key, err := s.signup(r)
	switch {
	case errors.Is(err, errSignupLimit):
		w.Header().Set("Retry-After", "3600")
		s.render(w, r, http.StatusTooManyRequests, &page{Title: "Try later", Error: "Too many accounts were created from this address; try again in an hour."})
		return
	case err != nil:
		s.render(w, r, http.StatusInternalServerError, &page{Title: "Error", Error: "Could not create the account; try again."})
		return
	}
	sess := s.sessions.start(w, r, a.ID, ledger.KeyHash(key), time.Now())
	s.sessions.setFlash(sess, &flash{Key: key, KeyName: "default",
		Notice: "Welcome. Your account starts with " + displayCredits(a.StartingCredit) + " credits."})
	back(w, r, "top")
}

func (s *Settlement) formSignin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBody)
	if c, err := r.Cookie(csrfCookie); err != nil || !csrfOK(r, c.Value) {
		s.forbidden(w, r)
		return
	}
	key := strings.TrimSpace(r.PostFormValue("api_key"))
	k, ok := s.led.KeyByHash(ledger.KeyHash(key))
	if !ok || k.Scope != ledger.ScopeAccount {
		msg := "That API key is not valid (or it was revoked)."
		if ok {
			msg = "That key is a node's: it links the node to your account and reads it, but cannot sign in. Sign in with a key of the account."
		}
		p := &page{Title: "Token-Router", Error: msg}
		s.publicData(p, time.Now())
		s.render(w, r, http.StatusUnauthorized, p)
		return
	}
	s.sessions.start(w, r, k.Account, ledger.KeyHash(key), time.Now())
	back(w, r, "top")
}

func (s *Settlement) formSignout(w http.ResponseWriter, r *http.Request, sess *session) {
	s.sessions.end(w, r, sess)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Settlement) formCreateKey(w http.ResponseWriter, r *http.Request, sess *session) {
	name := strings.TrimSpace(r.PostFormValue("name"))
	if name == "" {
		name = "key"
	}
	key, info, err := s.createKey(sess.account, name, ledger.ScopeAccount)
	if err != nil {
		s.sessions.setFlash(sess, &flash{Error: keyProblem(err)})
	} else {
		s.sessions.setFlash(sess, &flash{Key: key, KeyName: info.Name})
	}
	back(w, r, "keys")
}

func (s *Settlement) formRevokeKey(w http.ResponseWriter, r *http.Request, sess *session) {
	id := r.PathValue("id")
	if err := s.revokeKey(sess.account, id); err != nil {
		s.sessions.setFlash(sess, &flash{Error: keyProblem(err)})
	} else {
		s.sessions.setFlash(sess, &flash{Notice: "Key " + id + " is revoked: every gateway refuses it now."})
	}
	back(w, r, "keys")
}

func keyProblem(err error) string {
	switch {
	case errors.Is(err, errKeyChurn):
		return "Too many key changes: " + err.Error() + "."
	case errors.Is(err, ledger.ErrUnknownKey):
		return "There is no such key on your account."
	case errors.Is(err, ledger.ErrInvalid):
		return strings.TrimPrefix(err.Error(), ledger.ErrInvalid.Error()+": ")
	}
	return "Could not change your keys; try again."
}

// formRegisterNode makes a key for a new node and shows the command line
// that runs it, key filled in, once.
func (s *Settlement) formRegisterNode(w http.ResponseWriter, r *http.Request, sess *session) {
	key, info, err := s.createKey(sess.account, "node", ledger.ScopeNode)
	if err != nil {
		s.sessions.setFlash(sess, &flash{Error: keyProblem(err)})
		back(w, r, "nodes")
		return
	}
	upstream := "http://127.0.0.1:11434/v1" // Ollama's; docs/operators.md has llama-server's and vLLM's
	cmd := "TOKENROUTER_ACCOUNT_KEY=" + key + " tokenrouter node --data ~/.tokenrouter/node"
	if b := s.bootstrapAddr(); b != "" {
		cmd += " --bootstrap " + b
	}
	cmd += " --platform " + s.cfg.Host.ID().String() + " --upstream " + upstream
	s.sessions.setFlash(sess, &flash{Key: key, KeyName: info.Name, Command: cmd})
	back(w, r, "nodes")
}

// bootstrapAddr is an address a new node can bootstrap from: this peer's
// first bootstrap peer, else this peer itself.
func (s *Settlement) bootstrapAddr() string {
	for _, ai := range s.cfg.Host.Bootstrap() {
		if addrs, err := peer.AddrInfoToP2pAddrs(&ai); err == nil && len(addrs) > 0 {
			return addrs[0].String()
		}
	}
	if addrs := s.cfg.Host.FullAddrs(); len(addrs) > 0 {
		return addrs[0]
	}
	return ""
}

func (s *Settlement) formCloudNode(w http.ResponseWriter, r *http.Request, sess *session) {
	if s.cloud == nil {
		s.sessions.setFlash(sess, &flash{Error: "Hosted cloud nodes are not enabled on this settlement peer."})
		back(w, r, "nodes")
		return
	}
	req := cloudRequest{BaseURL: r.PostFormValue("base_url"), APIToken: r.PostFormValue("api_token")}
	for _, m := range strings.FieldsFunc(r.PostFormValue("models"), func(c rune) bool { return c == ',' || c == '\n' || c == '\r' }) {
		if m = strings.TrimSpace(m); m != "" {
			req.Models = append(req.Models, m)
		}
	}
	if c := strings.TrimSpace(r.PostFormValue("capacity")); c != "" {
		if _, err := fmt.Sscan(c, &req.Capacity); err != nil {
			s.sessions.setFlash(sess, &flash{Error: "Capacity must be a whole number of concurrent calls."})
			back(w, r, "nodes")
			return
		}
	}
	node, cerr := s.registerCloud(r.Context(), sess.account, req)
	if cerr != nil {
		s.sessions.setFlash(sess, &flash{Error: "The cloud node was not registered: " + cerr.msg})
	} else {
		s.sessions.setFlash(sess, &flash{Notice: "Cloud node " + node.ID + " registered; it serves " +
			strings.Join(node.Models, ", ") + " from " + node.BaseURL + ". Its API token is sealed and will not be shown again."})
	}
	back(w, r, "nodes")
}

func (s *Settlement) formDeleteCloudNode(w http.ResponseWriter, r *http.Request, sess *session) {
	id := r.PathValue("id")
	if s.cloud == nil {
		back(w, r, "nodes")
		return
	}
	found, err := s.cloud.remove(sess.account, id)
	switch {
	case !found:
		s.sessions.setFlash(sess, &flash{Error: "There is no such cloud node on your account."})
	case err != nil:
		s.log.Error("dashboard: delete cloud node", "cloud_node", id, "err", err)
		s.sessions.setFlash(sess, &flash{Error: "Could not delete the cloud node; try again."})
	default:
		s.sessions.setFlash(sess, &flash{Notice: "Cloud node " + id + " stopped and deleted."})
	}
	back(w, r, "nodes")
}

// networkView is every model's live supply and demand, by model.
func (s *Settlement) networkView(now time.Time) []modelView {
	unserved := s.demand.perMinute(now)
	out := []modelView{}
	for model, sp := range s.rep.Supply(now) {
		out = append(out, modelView{Model: model, Instances: sp.Instances, Capacity: sp.Capacity, InFlight: sp.InFlight,
			Unserved: unserved[model], UnderSupply: s.underSupply(model)})
	}
	slices.SortFunc(out, func(a, b modelView) int { return strings.Compare(a.Model, b.Model) })
	return out
}
