package origin

import (
	"strings"
	"testing"
)

func TestUpstreamPolicyMatching(t *testing.T) {
	p, err := parsePolicy([]string{"https://*.openai.com", "http://gpu.internal:*", "http://10.9.9.9:8000/v1",
		"10.0.0.0/8", "fd00::/8", "http://[2001:db8::1]:8080", "169.254.169.254"})
	if err != nil {
		t.Fatal(err)
	}
	for raw, want := range map[string]bool{
		"https://api.openai.com":              true,
		"https://api.openai.com/v1":           true,
		"https://openai.com":                  false,
		"https://api.openai.com:444":          false,
		"http://gpu.internal:1":               true,
		"https://gpu.internal":                false,
		"http://10.9.9.9:8000/v1/chat":        true,  // the CIDR allows it anyway
		"http://10.1.1.1":                     true,  // CIDR: any scheme, port and path
		"https://[fd12::1]:9000":              true,  // IPv6 CIDR
		"http://[::ffff:10.0.0.1]/":           true,  // mapped to the IPv4 address it reaches
		"http://[2001:db8::1]:8080/x":         true,  // an exact IPv6 entry
		"http://[2001:db8::1]:8081/x":         false, // its port
		"http://169.254.169.254/latest":       true,  // named: allowed
		"http://169.254.169.253/":             false, // a neighbour is not named
		"http://11.0.0.1":                     false,
		"http://127.0.0.1:8000":               false,
		"http://localhost:8000":               false,
		"http://metadata.google.internal/":    false,
		"https://metadata.openai.com":         true, // *.openai.com; only the metadata names themselves are denied
		"http://[fe80::1]/":                   false,
		"http://[64:ff9b::a9fe:a9fe]/":        true, // NAT64 of 169.254.169.254, which is named
		"http://[64:ff9b::a9fe:a9fd]/":        false,
		"https://api.openai.com.evil.example": false,
	} {
		u, h, err := parseUpstreamURL(raw)
		if err != nil {
			t.Errorf("%s: %v", raw, err)
			continue
		}
		if got := p.allows(u, h); got != want {
			t.Errorf("%s: allowed %v, want %v", raw, got, want)
		}
	}
	var def *upstreamPolicy
	for raw, want := range map[string]bool{
		"http://127.0.0.1:8000":         true,
		"https://api.openai.com":        true,
		"http://[::1]:9000":             true,
		"http://169.254.169.254/":       false,
		"http://[::ffff:169.254.1.1]/":  false,
		"http://metadata.goog/":         false,
		"http://instance-data/":         false,
		"http://0.0.0.0/":               false,
		"http://255.255.255.255/":       false,
		"http://[ff02::1]/":             false,
		"http://[fd00:ec2::254]/latest": false,
	} {
		u, h, err := parseUpstreamURL(raw)
		if err != nil {
			t.Errorf("%s: %v", raw, err)
			continue
		}
		if got := def.allows(u, h); got != want {
			t.Errorf("default policy, %s: allowed %v, want %v", raw, got, want)
		}
	}
	wide, _ := parsePolicy([]string{"0.0.0.0/0", "::/0", "http://*:*", "https://*:*"})
	for _, raw := range []string{"http://169.254.169.254/", "http://[fe80::1]/", "http://metadata/"} {
		u, h, _ := parseUpstreamURL(raw)
		if wide.allows(u, h) {
			t.Errorf("%s is reached by a wildcard or a wide CIDR", raw)
		}
	}
	for _, bad := range []string{"", "ftp://x", "x", "10.0.0.1/8", "http://*.", "http://a b", "http://x:0", "http://x:",
		"http://[zz]", "http://[fe80::1%eth0]", "http://u@x", "http://x?y", "http://x/../y", "http://::1", strings.Repeat("a", 300)} {
		if _, err := parsePolicy([]string{bad}); err == nil {
			t.Errorf("entry %q accepted", bad)
		}
	}
}

func TestUpstreamURLSyntax(t *testing.T) {
	for _, ok := range []string{"http://127.0.0.1:8000", "https://api.openai.com/v1", "http://[::1]:9000/", "http://gpu-1.eu.internal"} {
		if _, _, err := parseUpstreamURL(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"http://2852039166/", "http://0x7f.1/", "http://0177.0.0.1/", "http://010.0.0.1/", "http://1.2.3/",
		"http://x.example./", "http://x_y.example/", "http://[::1%25lo]/", "http://x/%2e%2e/", "http://x/a b", "http://x:99999/",
		"http://x/./a", "http:x", "//x", "http://[1.2.3.4]/", "http://::1/"} {
		if _, _, err := parseUpstreamURL(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
