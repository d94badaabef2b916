package settlement

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
)

func TestAddrRule(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want string // a word of the rule; "" = allowed
	}{
		{"127.0.0.1", "loopback"},
		{"127.255.0.9", "loopback"},
		{"::1", "loopback"},
		{"::ffff:127.0.0.1", "loopback"},
		{"::ffff:7f00:1", "loopback"},
		{"0.0.0.0", "unspecified"},
		{"::", "unspecified"},
		{"0.1.2.3", "this network"},
		{"10.0.0.1", "RFC 1918"},
		{"10.255.255.255", "RFC 1918"},
		{"172.16.0.1", "RFC 1918"},
		{"172.31.255.254", "RFC 1918"},
		{"192.168.1.1", "RFC 1918"},
		{"::ffff:10.1.2.3", "RFC 1918"},
		{"fd00::1", "unique local"},
		{"fc00::1", "unique local"},
		{"169.254.169.254", "link-local"},
		{"::ffff:169.254.169.254", "link-local"},
		{"169.254.0.1", "link-local"},
		{"fe80::1", "link-local"},
		{"fe80::1%eth0", "link-local"},
		{"100.64.0.1", "carrier-grade NAT"},
		{"100.127.255.254", "carrier-grade NAT"},
		{"224.0.0.1", "multicast"},
		{"239.255.255.250", "multicast"},
		{"ff02::1", "multicast"},
		{"ff0e::1", "multicast"},
		{"255.255.255.255", "reserved"},
		{"240.0.0.1", "reserved"},
		{"192.0.0.8", "IETF"},
		{"198.18.0.1", "benchmarking"},
		{"fec0::1", "site-local"},
		{"::7f00:1", "IPv4-compatible"},
		{"64:ff9b::7f00:1", "loopback"},      // NAT64 of 127.0.0.1
		{"64:ff9b::a9fe:a9fe", "link-local"}, // NAT64 of 169.254.169.254
		{"2002:a00:1::1", "RFC 1918"},        // 6to4 of 10.0.0.1
		{"2001::1", "Teredo"},
		// Public addresses may be called.
		{"1.1.1.1", ""},
		{"8.8.8.8", ""},
		{"100.63.255.255", ""},
		{"100.128.0.0", ""},
		{"172.32.0.1", ""},
		{"::ffff:1.1.1.1", ""},
		{"2606:4700::1111", ""},
		{"2a00:1450:4001:80e::200e", ""},
		{"64:ff9b::101:101", ""}, // NAT64 of 1.1.1.1
		{"2002:101:101::1", ""},  // 6to4 of 1.1.1.1
	} {
		a := netip.MustParseAddr(tc.addr)
		got := addrRule(a)
		switch {
		case tc.want == "" && got != "":
			t.Errorf("%s: refused as %q, want allowed", tc.addr, got)
		case tc.want != "" && !strings.Contains(got, tc.want):
			t.Errorf("%s: rule %q, want one naming %q", tc.addr, got, tc.want)
		}
	}
	if addrRule(netip.Addr{}) == "" {
		t.Error("the zero Addr is allowed")
	}
}

func TestRefuseNonPublic(t *testing.T) {
	for _, tc := range []struct {
		network, address string
		ok               bool
	}{
		{"tcp4", "127.0.0.1:443", false},
		{"tcp6", "[::1]:443", false},
		{"tcp6", "[::ffff:127.0.0.1]:443", false},
		{"tcp6", "[fe80::1%eth0]:443", false},
		{"tcp4", "169.254.169.254:80", false},
		{"tcp4", "not-an-address:443", false}, // fails closed
		{"tcp4", "1.1.1.1:443", true},
		{"tcp6", "[2606:4700::1111]:443", true},
	} {
		err := refuseNonPublic(tc.network, tc.address, nil)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrUpstreamNotAllowed)) {
			t.Errorf("%s %s: %v, want allowed=%v (ErrUpstreamNotAllowed when refused)", tc.network, tc.address, err, tc.ok)
		}
	}
}

func TestAllowedBaseURL(t *testing.T) {
	for _, tc := range []struct {
		url          string
		allowPrivate bool
		ok           bool
	}{
		{"https://api.openai.com/v1", false, true},
		{"https://1.1.1.1/v1", false, true},
		{"https://[2606:4700::1111]/v1", false, true},
		{"https://localhost:8443/v1", false, true}, // a name: refused when it is dialed
		{"http://api.openai.com/v1", false, false},
		{"http://127.0.0.1:11434/v1", false, false},
		{"http://localhost:11434/v1", false, false},
		{"https://127.0.0.1:8443/v1", false, false},
		{"https://[::1]:8443/v1", false, false},
		{"https://[::ffff:127.0.0.1]:8443/v1", false, false},
		{"https://169.254.169.254/latest", false, false},
		{"https://10.0.0.1/v1", false, false},
		{"https://100.64.0.1/v1", false, false},
		{"https://[fd00::1]/v1", false, false},
		{"https://[fe80::1%25eth0]/v1", false, false},
		// With AllowPrivate: the older rule, http to loopback only.
		{"http://127.0.0.1:11434/v1", true, true},
		{"http://localhost:11434/v1", true, true},
		{"http://[::1]:11434/v1", true, true},
		{"https://10.0.0.1/v1", true, true},
		{"http://10.0.0.1/v1", true, false},
		{"http://api.openai.com/v1", true, false},
	} {
		err := allowed(tc.url, tc.allowPrivate)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrUpstreamNotAllowed)) {
			t.Errorf("%s (allow private %v): %v, want allowed=%v", tc.url, tc.allowPrivate, err, tc.ok)
		}
		if err != nil && !tc.allowPrivate && !strings.Contains(err.Error(), "--"+AllowPrivateFlag) {
			t.Errorf("%s: %q does not name --%s", tc.url, err, AllowPrivateFlag)
		}
	}
}

// countingServer is an upstream that counts the connections and requests it gets.
type countingServer struct {
	srv          *httptest.Server
	conns, calls atomic.Int32
}

func newCountingServer(t *testing.T, tls bool, h http.HandlerFunc) *countingServer {
	t.Helper()
	c := &countingServer{}
	c.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.calls.Add(1)
		h(w, r)
	}))
	c.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			c.conns.Add(1)
		}
	}
	if tls {
		c.srv.StartTLS()
	} else {
		c.srv.Start()
	}
	t.Cleanup(c.srv.Close)
	return c
}

func (c *countingServer) port() string {
	_, port, _ := net.SplitHostPort(c.srv.Listener.Addr().String())
	return port
}

func okModels(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"object":"list","data":[{"id":"m"}]}`)
}

// TestCloudTransportRefusesAtDial checks the policy holds on connections,
// not only on the registered URL: a name that resolves to loopback is
// refused as it is dialed, with no connection made, and a redirect to plain
// http is refused.
func TestCloudTransportRefusesAtDial(t *testing.T) {
	up := newCountingServer(t, true, okModels)
	client := &http.Client{Transport: newCloudTransport(false)}
	for _, u := range []string{
		"https://localhost:" + up.port() + "/v1/models",
		"https://127.0.0.1:" + up.port() + "/v1/models",
		"https://[::ffff:127.0.0.1]:" + up.port() + "/v1/models",
		"http://localhost:" + up.port() + "/v1/models",
	} {
		resp, err := client.Get(u)
		if err == nil {
			resp.Body.Close()
		}
		if !errors.Is(err, ErrUpstreamNotAllowed) {
			t.Errorf("GET %s: %v, want ErrUpstreamNotAllowed", u, err)
		} else {
			t.Logf("GET %s: %v", u, err)
		}
	}
	if n := up.conns.Load(); n != 0 {
		t.Errorf("the upstream accepted %d connections", n)
	}

	// AllowPrivate dials loopback (the certificate is the test server's own).
	tr := newCloudTransport(true).(*http.Transport)
	tr.TLSClientConfig = &tls.Config{RootCAs: up.srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	resp, err := (&http.Client{Transport: tr}).Get(up.srv.URL + "/v1/models")
	if err != nil {
		t.Fatalf("with AllowPrivate: %v", err)
	}
	resp.Body.Close()
	if up.calls.Load() != 1 {
		t.Fatalf("with AllowPrivate the upstream got %d calls, want 1", up.calls.Load())
	}

	// A redirect to plain http goes through httpsOnly too (the public
	// address check is the dialer's, as above, for every hop).
	plain := newCountingServer(t, false, okModels)
	redir := newCountingServer(t, true, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.srv.URL+"/v1/models", http.StatusFound)
	})
	rc := &http.Client{Transport: httpsOnly{redir.srv.Client().Transport}}
	resp, err = rc.Get(redir.srv.URL + "/v1/models")
	if err == nil {
		resp.Body.Close()
	}
	if !errors.Is(err, ErrUpstreamNotAllowed) || redir.calls.Load() != 1 || plain.conns.Load() != 0 {
		t.Fatalf("redirect to http: %v (redirector %d calls, target %d connections)", err, redir.calls.Load(), plain.conns.Load())
	}
}

// TestCloudNodeRegistrationRefusesPrivateUpstreams runs a settlement peer
// without AllowPrivate: base URLs that would make it call loopback, private
// or link-local addresses, or plain http, are refused with 400
// upstream_not_allowed, and the upstreams listening there get nothing.
func TestCloudNodeRegistrationRefusesPrivateUpstreams(t *testing.T) {
	token := randomToken()
	tlsUp := newCountingServer(t, true, okModels)
	plainUp := newCountingServer(t, false, okModels)
	p, err := startCloudPeer(t, t.TempDir(), newHost(t).FullAddrs()[0], "", io.Discard, false)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := p.signup(t)
	for _, tc := range []struct {
		name, url, says string
	}{
		{"plain http to loopback", "http://127.0.0.1:" + plainUp.port() + "/v1", "plain http"},
		{"plain http to localhost", "http://localhost:" + plainUp.port() + "/v1", "plain http"},
		{"https to loopback", "https://127.0.0.1:" + tlsUp.port() + "/v1", "loopback"},
		{"https to mapped loopback", "https://[::ffff:127.0.0.1]:" + tlsUp.port() + "/v1", "loopback"},
		{"https to ::1", "https://[::1]:" + tlsUp.port() + "/v1", "loopback"},
		{"a name resolving to loopback, refused as dialed", "https://localhost:" + tlsUp.port() + "/v1", "loopback"},
		{"cloud metadata", "https://169.254.169.254/latest", "link-local"},
		{"RFC 1918", "https://10.0.0.1/v1", "RFC 1918"},
		{"CGNAT", "https://100.64.0.1/v1", "carrier-grade NAT"},
		{"unique local", "https://[fd00::1]/v1", "unique local"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, _ := do(t, http.MethodPost, p.url+"/v1/nodes/cloud", key,
				map[string]any{"base_url": tc.url, "api_token": token})
			if code != http.StatusBadRequest {
				t.Fatalf("status %d, want 400: %s", code, body)
			}
			e := decodeOpenAIError(t, body)
			if e.Error.Code == nil || *e.Error.Code != "upstream_not_allowed" || e.Error.Param == nil || *e.Error.Param != "base_url" {
				t.Errorf("code %v param %v, want upstream_not_allowed on base_url: %s", e.Error.Code, e.Error.Param, body)
			}
			if !strings.Contains(e.Error.Message, tc.says) || !strings.Contains(e.Error.Message, "--"+AllowPrivateFlag) {
				t.Errorf("message %q should name %q and --%s", e.Error.Message, tc.says, AllowPrivateFlag)
			}
			if strings.Contains(string(body), token) {
				t.Errorf("the answer quotes the token: %s", body)
			}
			t.Logf("%s", body)
		})
	}
	if got := p.cloudNodes(t, key); len(got) != 0 {
		t.Fatalf("refused registrations were kept: %+v", got)
	}
	for name, up := range map[string]*countingServer{"https": tlsUp, "http": plainUp} {
		if c, n := up.conns.Load(), up.calls.Load(); c != 0 || n != 0 {
			t.Errorf("the %s upstream got %d connections and %d requests, want none", name, c, n)
		}
	}
}

// TestCloudUpstreamClientRefusesAtDial checks the client a running hosted
// node calls its upstream with (not only the registration check) refuses a
// name that resolves to loopback, as when DNS changes after registration.
func TestCloudUpstreamClientRefusesAtDial(t *testing.T) {
	up := newCountingServer(t, true, okModels)
	c := &cloudNodes{cfg: DefaultCloudConfig(), tr: newCloudTransport(false)}
	_, err := c.upstream("https://localhost:"+up.port()+"/v1", randomToken()).Models(context.Background())
	if !errors.Is(err, ErrUpstreamNotAllowed) || up.conns.Load() != 0 {
		t.Fatalf("Models via a hosted node's client: %v (%d connections); want ErrUpstreamNotAllowed, none", err, up.conns.Load())
	}
}
