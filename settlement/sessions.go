package settlement

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// Dashboard sessions. A person signs in with an API key; the session keeps
// the key's hash (never the key), so revoking that key ends the session.
// Sessions live in memory: a restarted settlement peer asks everyone to sign
// in again, which costs a paste.
const (
	sessionCookie = "tr_session"
	csrfCookie    = "tr_csrf" // before sign-in: the double-submit token of the sign-up and sign-in forms
	sessionLife   = 12 * time.Hour
	maxSessions   = 100_000
	// maxAccountSessions bounds one account's sessions: signing in again
	// past it ends that account's oldest, never anyone else's.
	maxAccountSessions = 16
)

type session struct {
	id      string
	account string
	keyHash string // the key it signed in with
	csrf    string // every form of the session carries it
	expires time.Time
	flash   *flash // shown once by the next page
}

// flash is what the next page shows once: a new key (its only showing), the
// command line that runs a node with it, a notice or an error.
type flash struct {
	Key     string
	KeyName string
	Command string
	Notice  string
	Error   string
}

type sessions struct {
	mu        sync.Mutex
	m         map[string]*session
	byAccount map[string][]*session // oldest first
	swept     time.Time
}

func newSessions() *sessions {
	return &sessions{m: map[string]*session{}, byAccount: map[string][]*session{}}
}

// drop forgets s; called with mu held.
func (ss *sessions) drop(s *session) {
	delete(ss.m, s.id)
	list := slices.DeleteFunc(ss.byAccount[s.account], func(x *session) bool { return x == s })
	if len(list) == 0 {
		delete(ss.byAccount, s.account)
	} else {
		ss.byAccount[s.account] = list
	}
}

// sweep drops expired sessions, at most once a minute; called with mu held.
func (ss *sessions) sweep(now time.Time) {
	if now.Sub(ss.swept) < time.Minute {
		return
	}
	ss.swept = now
	for _, s := range ss.m {
		if now.After(s.expires) {
			ss.drop(s)
		}
	}
}

func sessionToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// start opens a session for account, signed in with the key whose hash is
// keyHash, and sets its cookie.
func (ss *sessions) start(w http.ResponseWriter, r *http.Request, account, keyHash string, now time.Time) *session {
	s := &session{id: sessionToken(), account: account, keyHash: keyHash, csrf: sessionToken(), expires: now.Add(sessionLife)}
	ss.mu.Lock()
	ss.sweep(now)
	if list := ss.byAccount[account]; len(list) >= maxAccountSessions {
		ss.drop(list[0]) // this account's oldest session
	}
	if len(ss.m) >= maxSessions {
		// Only many accounts together get here (each holds at most
		// maxAccountSessions): the session nearest its end goes.
		var first *session
		for _, old := range ss.m {
			if first == nil || old.expires.Before(first.expires) {
				first = old
			}
		}
		ss.drop(first)
	}
	ss.m[s.id] = s
	ss.byAccount[account] = append(ss.byAccount[account], s)
	ss.mu.Unlock()
	setCookie(w, r, sessionCookie, s.id, sessionLife)
	clearCookie(w, r, csrfCookie)
	return s
}

// get returns the request's live session: its cookie names one that has
// not expired and whose key still exists (led says which).
func (ss *sessions) get(r *http.Request, led *ledger.Ledger, now time.Time) *session {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return nil
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s := ss.m[c.Value]
	if s == nil {
		return nil
	}
	if k, ok := led.KeyByHash(s.keyHash); !ok || k.Account != s.account || now.After(s.expires) {
		ss.drop(s) // expired, or its key was revoked
		return nil
	}
	return s
}

// end closes s and clears its cookie.
func (ss *sessions) end(w http.ResponseWriter, r *http.Request, s *session) {
	ss.mu.Lock()
	ss.drop(s)
	ss.mu.Unlock()
	clearCookie(w, r, sessionCookie)
}

// setFlash leaves f for the next page s shows; takeFlash takes it.
func (ss *sessions) setFlash(s *session, f *flash) {
	ss.mu.Lock()
	s.flash = f
	ss.mu.Unlock()
}

func (ss *sessions) takeFlash(s *session) *flash {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	f := s.flash
	s.flash = nil
	return f
}

// preCSRF returns the sign-up/sign-in forms' token, setting its cookie when
// the browser has none yet.
func preCSRF(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) >= 32 {
		return c.Value
	}
	t := sessionToken()
	setCookie(w, r, csrfCookie, t, sessionLife)
	return t
}

// csrfOK checks a form's token against want in constant time.
func csrfOK(r *http.Request, want string) bool {
	got := r.PostFormValue("csrf")
	return want != "" && got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// secure reports whether the page was served over https (directly, or
// through a proxy that terminated TLS): then cookies are Secure.
func secure(r *http.Request) bool {
	return r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"
}

func setCookie(w http.ResponseWriter, r *http.Request, name, value string, life time.Duration) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: "/", MaxAge: int(life / time.Second),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: secure(r),
	})
}

func clearCookie(w http.ResponseWriter, r *http.Request, name string) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: secure(r),
	})
}
