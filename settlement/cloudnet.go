package settlement

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// AllowPrivateFlag is the settle flag (and, as TOKENROUTER_CLOUD_ALLOW_PRIVATE,
// environment variable) that sets CloudConfig.AllowPrivate. Error messages
// name it so an operator knows what a refusal is about.
const AllowPrivateFlag = "cloud-allow-private"

// ErrUpstreamNotAllowed is the error, matched with errors.Is, of a call to a
// hosted node's upstream that the settlement peer refuses to make: plain
// http, or an address on its own host or private network. Without this rule
// any account could register a base URL that makes the platform call its
// internal services (SSRF) and read their error texts back.
var ErrUpstreamNotAllowed = errors.New("cloud upstream not allowed")

// notAllowedError says which rule refused an upstream. It matches
// ErrUpstreamNotAllowed.
type notAllowedError struct {
	addr   netip.Addr // the refused address, when an address was refused
	rule   string     // what kind of address it is, from addrRule
	host   string     // the refused host, when plain http was refused
	reason string     // what could not be checked, when neither
}

func (e *notAllowedError) Error() string {
	hint := "hosted cloud nodes call public addresses over https only (unless the settlement peer runs with --" +
		AllowPrivateFlag + ", for local engines)"
	switch {
	case e.addr.IsValid():
		return fmt.Sprintf("address %s is %s: %s", e.addr, e.rule, hint)
	case e.host != "":
		return fmt.Sprintf("plain http to %s: %s", e.host, hint)
	}
	return e.reason + ": " + hint
}

func (e *notAllowedError) Unwrap() error { return ErrUpstreamNotAllowed }

// Address ranges refused beyond what netip's predicates name.
var blockedPrefixes = []struct {
	p    netip.Prefix
	rule string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), `"this network" (0.0.0.0/8; Linux dials 0.0.0.0 as loopback)`},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared address space (100.64.0.0/10, carrier-grade NAT)"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignments (192.0.0.0/24)"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking (198.18.0.0/15)"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved (240.0.0.0/4, with broadcast)"},
	{netip.MustParsePrefix("::/96"), "IPv4-compatible (::/96, deprecated)"},
	{netip.MustParsePrefix("fec0::/10"), "site-local (fec0::/10, deprecated)"},
	{netip.MustParsePrefix("2001::/32"), "Teredo (2001::/32)"},
}

// Prefixes of IPv6 addresses that carry an IPv4 address to reach: they are
// judged by the IPv4 address they embed.
var (
	nat64  = netip.MustParsePrefix("64:ff9b::/96")
	sixTo4 = netip.MustParsePrefix("2002::/16")
)

// addrRule says why a hosted node may not call a: loopback, private (RFC
// 1918, fc00::/7), link-local (169.254.0.0/16 with the cloud metadata
// service, fe80::/10), unspecified, multicast, carrier-grade NAT and other
// non-public ranges. "" means a may be called. It is pure; the dialer calls
// it on every address it connects to.
func addrRule(a netip.Addr) string {
	if !a.IsValid() {
		return "not an IP address"
	}
	a = a.WithZone("").Unmap() // ::ffff:127.0.0.1 is 127.0.0.1
	switch {
	case a.IsUnspecified():
		return "unspecified"
	case a.IsLoopback():
		return "loopback"
	case a.IsPrivate() && a.Is4():
		return "private (RFC 1918)"
	case a.IsPrivate():
		return "unique local (fc00::/7)"
	case a.IsLinkLocalUnicast():
		return "link-local (169.254.0.0/16 or fe80::/10, where cloud metadata services answer)"
	case a.IsMulticast():
		return "multicast"
	}
	if a.Is6() {
		b := a.As16()
		var v4 netip.Addr
		switch {
		case nat64.Contains(a):
			v4 = netip.AddrFrom4([4]byte(b[12:16]))
		case sixTo4.Contains(a):
			v4 = netip.AddrFrom4([4]byte(b[2:6]))
		}
		if v4.IsValid() {
			if r := addrRule(v4); r != "" {
				return fmt.Sprintf("an IPv6 form of %s, which is %s", v4, r)
			}
		}
	}
	for _, bp := range blockedPrefixes {
		if bp.p.Contains(a) {
			return bp.rule
		}
	}
	return ""
}

// refuseNonPublic is a net.Dialer Control function: it runs after name
// resolution, on the very address about to be connected to, so neither a
// host name nor a DNS answer that changes after registration (rebinding)
// nor a redirect can reach a refused address.
func refuseNonPublic(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return &notAllowedError{reason: fmt.Sprintf("cannot check the address %q", address)}
	}
	if r := addrRule(ap.Addr()); r != "" {
		return &notAllowedError{addr: ap.Addr().WithZone("").Unmap(), rule: r}
	}
	return nil
}

// newCloudTransport is the HTTP transport hosted nodes reach cloud APIs
// with, tuned like the engine package's shared client. Unless allowPrivate,
// it calls https only, refuses non-public addresses as it dials, and uses no
// proxy (a proxy would make the connection in its place, unchecked).
func newCloudTransport(allowPrivate bool) http.RoundTripper {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	proxy := http.ProxyFromEnvironment
	if !allowPrivate {
		d.Control, proxy = refuseNonPublic, nil
	}
	t := &http.Transport{
		Proxy:                 proxy,
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     true,             // cloud providers speak HTTP/2
		TLSHandshakeTimeout:   10 * time.Second, // bounded like the dial
		ResponseHeaderTimeout: 60 * time.Second, // a busy provider may queue a request before answering
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true, // SSE must arrive token by token
	}
	if allowPrivate {
		return t
	}
	return httpsOnly{t}
}

// httpsOnly refuses every request that is not https, redirects included
// (the client sends each through its transport): the API token never
// travels in clear, and plain http cannot reach a local service.
type httpsOnly struct{ base http.RoundTripper }

func (t httpsOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, &notAllowedError{host: req.URL.Host}
	}
	return t.base.RoundTrip(req)
}

// allowed checks the parts of a base URL's policy that need no name
// resolution: the scheme, and the address when the host is an IP literal.
// Host names are checked as they are dialed. With allowPrivate it keeps the
// older rule: plain http only to a loopback host.
func allowed(base string, allowPrivate bool) error {
	u, err := url.Parse(base)
	if err != nil {
		return &notAllowedError{reason: "cannot parse the base URL"}
	}
	host := u.Hostname()
	if allowPrivate {
		if u.Scheme == "http" && !loopbackHost(host) {
			return fmt.Errorf("%w: plain http is allowed only to a loopback address (a local engine); use https", ErrUpstreamNotAllowed)
		}
		return nil
	}
	if u.Scheme != "https" {
		return &notAllowedError{host: u.Host}
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if r := addrRule(a); r != "" {
			return &notAllowedError{addr: a.WithZone("").Unmap(), rule: r}
		}
	}
	return nil
}

func loopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.Unmap().IsLoopback()
}
