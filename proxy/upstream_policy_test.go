package proxy

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestUpstreamPolicyCheck(t *testing.T) {
	p, err := parseUpstreamPolicy([]string{"10.0.0.0/8", "192.168.1.7", "gpu.internal:8000", "*.gpu.example", "169.254.10.0/24", "0.0.0.0/0:9999"})
	if err == nil {
		t.Fatal("a CIDR with a port was accepted")
	}
	p, err = parseUpstreamPolicy([]string{"10.0.0.0/8", "192.168.1.7", "gpu.internal:8000", "*.gpu.example", "169.254.10.0/24", "[fd12::1]:80", "0.0.0.0/0"})
	if err != nil {
		t.Fatal(err)
	}
	p.addOwn(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9090})
	p.addOwn(&net.TCPAddr{IP: net.IPv6unspecified, Port: 7946})
	for _, tt := range []struct {
		host, addr string
		want       *upstreamDeniedError
	}{
		{"10.1.2.3", "10.1.2.3:8000", nil},
		{"gpu.internal", "172.16.0.1:8000", nil},                // the name is allowed
		{"gpu.internal", "172.16.0.1:8001", nil},                // 0.0.0.0/0 allows any address...
		{"x", "169.254.169.254:80", deniedAddress},              // ...but not metadata: the prefix is broader than the denied range
		{"gpu.internal", "169.254.169.254:8000", deniedAddress}, // an allowed name cannot resolve to it
		{"x", "169.254.10.5:80", nil},                           // a prefix inside the range re-allows it
		{"x", "[::ffff:169.254.169.254]:80", deniedAddress},
		{"x", "[64:ff9b::a9fe:a9fe]:80", deniedAddress}, // NAT64 of 169.254.169.254
		{"x", "[fd00:ec2::254]:80", deniedAddress},
		{"x", "100.100.100.200:80", deniedAddress},
		{"x", "[fe80::1]:80", deniedAddress},
		{"x", "[fe80::1%eth0]:80", deniedAddress}, // a zone hides an address from netip.Prefix.Contains
		{"x", "0.0.0.0:80", deniedAddress},
		{"x", "127.0.0.1:9090", deniedOwnListener},
		{"x", "127.0.0.2:9090", deniedOwnListener}, // any loopback reaches a loopback listener
		{"x", "[::1]:9090", deniedOwnListener},
		{"x", "0.0.0.0:9090", deniedOwnListener},
		{"x", "127.0.0.1:7946", deniedOwnListener}, // bound to every address
		{"x", "127.0.0.1:9091", nil},
	} {
		if got := p.check(tt.host, netip.MustParseAddrPort(tt.addr)); got != tt.want {
			t.Errorf("%s at %s: %v, want %v", tt.host, tt.addr, got, tt.want)
		}
	}

	strict, err := parseUpstreamPolicy([]string{"gpu.internal:8000", "https://*.gpu.example", "10.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		host, addr string
		want       *upstreamDeniedError
	}{
		{"gpu.internal", "172.16.0.1:8000", nil},
		{"gpu.internal", "172.16.0.1:8001", deniedNotAllowed},
		{"a.gpu.example", "172.16.0.1:443", nil},
		{"gpu.example", "172.16.0.1:443", deniedNotAllowed},
		{"evil.example", "10.9.9.9:80", nil},
		{"localhost", "127.0.0.1:80", deniedNotAllowed}, // loopback is allowed only when nothing is listed
	} {
		if got := strict.check(tt.host, netip.MustParseAddrPort(tt.addr)); got != tt.want {
			t.Errorf("strict: %s at %s: %v, want %v", tt.host, tt.addr, got, tt.want)
		}
	}
	names, _ := parseUpstreamPolicy([]string{"https://*.gpu.example"})
	for raw, want := range map[string]*upstreamDeniedError{
		"https://a.gpu.example/v1": nil, "http://a.gpu.example": deniedNotAllowed, "https://10.0.0.1": deniedNotAllowed,
	} {
		u, _ := url.Parse(raw)
		if got := names.allowsURL(u); got != want {
			t.Errorf("allowsURL(%s) = %v", raw, got)
		}
	}
	if open, _ := parseUpstreamPolicy(nil); open.check("localhost", netip.MustParseAddrPort("127.0.0.1:8000")) != nil {
		t.Fatal("loopback denied by default")
	}
}

func TestUpstreamPolicyParseErrors(t *testing.T) {
	for _, bad := range []string{"ftp://x", "http://x/path", "user@x", "*x.example", "*", "x:0", "x:99999", "https://10.0.0.1", "a b"} {
		if _, err := parseUpstreamPolicy([]string{bad}); !errors.Is(err, ErrUpstreamPolicy) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	p, _ := parseUpstreamPolicy([]string{"127.0.0.1:9090"})
	if err := p.checkOwnPatterns(map[string]string{"--admin-listen": "127.0.0.1:9090"}); !errors.Is(err, ErrUpstreamPolicy) {
		t.Fatalf("a pattern naming the admin listener: %v", err)
	}
	p, _ = parseUpstreamPolicy([]string{"localhost:7946"})
	if err := p.checkOwnPatterns(map[string]string{"--gossip-listen": ":7946"}); !errors.Is(err, ErrUpstreamPolicy) {
		t.Fatalf("a pattern naming the gossip listener: %v", err)
	}
	p, _ = parseUpstreamPolicy([]string{"127.0.0.0/8", "127.0.0.1:8000"})
	if err := p.checkOwnPatterns(map[string]string{"--admin-listen": "127.0.0.1:9090", "--listen": "127.0.0.1:0"}); err != nil {
		t.Fatalf("patterns that name no listener: %v", err)
	}
}

// The dialer checks the address it connects to: a listener the policy
// denies is never connected to (its accept queue stays empty).
func TestUpstreamDialerChecksTheConnectedAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p, _ := parseUpstreamPolicy(nil)
	p.addOwn(ln.Addr())
	dial := p.dialer(time.Second, time.Minute)
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	for _, addr := range []string{ln.Addr().String(), "localhost:" + port} {
		c, err := dial(addr)
		var denied *upstreamDeniedError
		if c != nil || !errors.As(err, &denied) || denied != deniedOwnListener || !isConnectError(err) {
			t.Fatalf("dialling the edge's own listener at %s: %v %v", addr, c, err)
		}
	}
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	c, err := dial(other.Addr().String())
	if err != nil {
		t.Fatalf("dialling an allowed address: %v", err)
	}
	c.Close()
}

// fasthttp's messages quote request bytes; its logger prints none of them.
func TestFasthttpLoggerPrintsNoRequestBytes(t *testing.T) {
	var buf bytes.Buffer
	l := fasthttpLogger{slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	secret := "Authorization: Basic c2VjcmV0OnBhc3N3b3Jk\r\nCookie: sid=cookie-secret\r\nalice@example.com"
	l.Printf("error when serving connection %q<->%q: %v", &net.TCPAddr{Port: 1}, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 2},
		errors.New("error when reading request headers: invalid header key "+secret))
	l.Printf("something new %q %s %v", secret, secret, []byte(secret))
	out := buf.String()
	for _, part := range []string{"c2VjcmV0", "cookie-secret", "alice@example.com"} {
		if strings.Contains(out, part) {
			t.Fatalf("logged %q: %s", part, out)
		}
	}
	if !strings.Contains(out, "192.0.2.1:2") || !strings.Contains(out, "error=malformed_header") {
		t.Fatalf("the line lacks the remote address or error class: %s", out)
	}
}
