package viewer

import (
	"fmt"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
)

// headerName is what an HTTP header name may be (RFC 9110 token).
var headerName = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

// CheckTrustedProxies reports the first of list that is neither an
// address nor a CIDR, as [Config.TrustedProxies] takes them.
func CheckTrustedProxies(list []string) error {
	_, err := parseProxies(list)
	return err
}

// CheckClientIPHeader reports whether h can be [Config.ClientIPHeader]: a
// header name, or empty for none.
func CheckClientIPHeader(h string) error {
	if h != "" && !headerName.MatchString(h) {
		return fmt.Errorf("%q is not a header name", h)
	}
	return nil
}

// parseProxies parses the trusted proxies: CIDRs, or single addresses.
func parseProxies(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, v := range list {
		v = strings.TrimSpace(v)
		if p, err := netip.ParsePrefix(v); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q is neither an address nor a CIDR", v)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// trusted reports whether a is one of the trusted proxies.
func (s *Server) trusted(a netip.Addr) bool {
	for _, p := range s.proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientKey names the client a request comes from, for the per-client
// limit of live connections: its address, or its IPv6 /64 (one host holds
// a whole /64, so counting single IPv6 addresses would bound nothing).
//
// The peer is the client unless it is a trusted proxy. Then the client is
// found in ClientIPHeader from the right: each proxy appends the address
// it saw, so the rightmost address that is not itself a trusted proxy is
// the first one no trusted party vouches for, and anything left of it may
// have been written by the client. An entry that is not an address stops
// the walk at the last hop known, so a garbled header cannot make a client
// of its own choosing.
func (s *Server) clientKey(r *http.Request) string {
	addr := peerAddr(r.RemoteAddr)
	if addr.IsValid() && s.cfg.ClientIPHeader != "" && s.trusted(addr) {
		hops := forwarded(r.Header.Values(s.cfg.ClientIPHeader))
		for i := len(hops) - 1; i >= 0; i-- {
			a := parseHop(hops[i])
			if !a.IsValid() {
				break
			}
			addr = a
			if !s.trusted(a) {
				break
			}
		}
	}
	if !addr.IsValid() {
		// Not an IP peer (a test's in-memory listener): one client.
		return r.RemoteAddr
	}
	if addr.Is6() {
		p, _ := addr.WithZone("").Prefix(64)
		return p.String()
	}
	return addr.String()
}

// peerAddr parses the peer of a request, host:port.
func peerAddr(remote string) netip.Addr {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// forwarded splits the header's values into its comma-separated entries.
func forwarded(values []string) []string {
	var hops []string
	for _, v := range values {
		for _, h := range strings.Split(v, ",") {
			hops = append(hops, strings.TrimSpace(h))
		}
	}
	return hops
}

// parseHop parses one entry of a forwarding header: an address, with a
// port or not (some proxies add it).
func parseHop(h string) netip.Addr {
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Unmap()
	}
	if ap, err := netip.ParseAddrPort(h); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}
