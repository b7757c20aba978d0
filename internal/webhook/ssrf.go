package webhook

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"time"
)

// A webhook URL is chosen by a shop, but the request is made by the hub,
// from inside the operator's network: without care a shop could make the
// hub POST to the cloud's metadata service (169.254.169.254), to an admin
// port on localhost, or to anything else only the hub can reach (server-side
// request forgery). So:
//
//   - only https, or http to hosts the operator listed (AllowHTTP);
//   - every address the hub connects to is checked when the socket is
//     about to connect (the dialer's Control hook sees the address the name
//     resolved to), so a name that resolved to a public address when the
//     endpoint was registered and to 127.0.0.1 now (DNS rebinding) is
//     still refused; internal addresses are allowed only in AllowPrivate;
//   - no proxy from the environment (it would connect on the hub's behalf,
//     past the check), no redirects followed (a 3xx is a failed attempt),
//     response bodies read to a small limit, headers bounded.

// internalRanges are the networks no delivery may reach unless allowed,
// beside those netip classifies (loopback, private, link-local, multicast,
// unspecified).
var internalRanges = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), `"this network"`},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared (carrier-grade NAT)"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignment"},
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation"},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	{netip.MustParsePrefix("100::/64"), "discard-only"},
	{netip.MustParsePrefix("2001::/32"), "Teredo tunnel"},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation"},
	{netip.MustParsePrefix("fec0::/10"), "site-local"},
}

// IPv6 prefixes that embed an IPv4 address, or lead to a local translator.
var (
	nat64      = netip.MustParsePrefix("64:ff9b::/96")
	nat64Local = netip.MustParsePrefix("64:ff9b:1::/48")
	sixToFour  = netip.MustParsePrefix("2002::/16")
)

// internalAddr says why ip is an internal address, or "" when it is public.
// IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4) are judged by
// the IPv4 address they lead to.
func internalAddr(ip netip.Addr) string {
	ip = ip.WithZone("").Unmap()
	switch {
	case !ip.IsValid():
		return "invalid"
	case ip.IsLoopback():
		return "loopback"
	case ip.IsPrivate():
		return "private"
	case ip.IsLinkLocalUnicast():
		return "link-local" // 169.254.0.0/16 holds the clouds' metadata services
	case ip.IsUnspecified():
		return "unspecified"
	case ip.IsMulticast():
		return "multicast"
	}
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64.Contains(ip):
			if why := internalAddr(netip.AddrFrom4([4]byte(b[12:16]))); why != "" {
				return why + " (through NAT64)"
			}
		case nat64Local.Contains(ip):
			return "local-use NAT64"
		case sixToFour.Contains(ip):
			if why := internalAddr(netip.AddrFrom4([4]byte(b[2:6]))); why != "" {
				return why + " (through 6to4)"
			}
		}
	}
	for _, r := range internalRanges {
		if r.prefix.Contains(ip) {
			return r.what
		}
	}
	return ""
}

// RefusedError is a delivery or a URL refused because it leads to an
// internal address the operator did not allow.
type RefusedError struct {
	Addr netip.Addr
	Why  string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("destination %s refused: %s address (allowed only when the operator lists it)", e.Addr, e.Why)
}

// guard decides which destinations deliveries may reach.
type guard struct {
	allowHTTP    []string
	allowPrivate []netip.Prefix
}

func (g guard) check(ip netip.Addr) error {
	ip = ip.WithZone("").Unmap()
	why := internalAddr(ip)
	if why == "" {
		return nil
	}
	for _, p := range g.allowPrivate {
		if p.Contains(ip) {
			return nil
		}
	}
	return &RefusedError{Addr: ip, Why: why}
}

// control is the dialer's Control hook: it runs for every address a
// connection is about to be made to, after name resolution.
func (g guard) control(network, address string, _ syscall.RawConn) error {
	if network != "tcp4" && network != "tcp6" {
		return fmt.Errorf("network %s refused", network)
	}
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("dial %s: %w", address, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("dial %s: not an IP address", address)
	}
	return g.check(ip)
}

// checkURL validates an endpoint URL at registration. The address check
// here only catches literal IP addresses early, with a clear error; names
// are checked at every connection (control).
func (g guard) checkURL(raw string, maxLen int) (*url.URL, error) {
	if len(raw) > maxLen {
		return nil, badRequest("url is %d bytes; at most %d", len(raw), maxLen)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, badRequest("url: %v", err)
	}
	if !u.IsAbs() || u.Opaque != "" || u.Host == "" {
		return nil, badRequest("url %q: want an absolute http(s) URL with a host", raw)
	}
	if u.User != nil {
		return nil, badRequest("url: credentials in the URL are not accepted (the signature authenticates the hub)")
	}
	if u.Fragment != "" || u.RawFragment != "" {
		return nil, badRequest("url: a fragment (#…) is never sent; leave it out")
	}
	host := strings.ToLower(u.Hostname())
	switch u.Scheme {
	case "https":
	case "http":
		if !slices.Contains(g.allowHTTP, host) {
			return nil, badRequest("url: only https URLs are accepted (plain http only to hosts the operator allows)")
		}
	default:
		return nil, badRequest("url: scheme %q; want https", u.Scheme)
	}
	if p := u.Port(); p != "" {
		var n int
		if _, err := fmt.Sscanf(p, "%d", &n); err != nil || n < 1 || n > 65535 {
			return nil, badRequest("url: bad port %q", p)
		}
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if err := g.check(ip); err != nil {
			return nil, badRequest("url: %v", err)
		}
	}
	return u, nil
}

// maxResponseHeaderBytes bounds what a receiver may answer in headers.
const maxResponseHeaderBytes = 16 << 10

// newClient builds the HTTP client deliveries use: dial-time address
// checks, no proxy, no redirects, bounded headers.
func newClient(g guard, tlsCfg *tls.Config, timeout time.Duration, perHost int) (*http.Client, *http.Transport) {
	d := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second, Control: g.control}
	if tlsCfg == nil {
		tlsCfg = &tls.Config{}
	} else {
		tlsCfg = tlsCfg.Clone()
	}
	if tlsCfg.MinVersion == 0 {
		tlsCfg.MinVersion = tls.VersionTLS12
	}
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
		TLSClientConfig:        tlsCfg,
		TLSHandshakeTimeout:    timeout,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           256,
		MaxIdleConnsPerHost:    perHost,
		IdleConnTimeout:        60 * time.Second,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
	}
	c := &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	return c, tr
}
