package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/internal/natsauth"
	"github.com/keymesh/keymesh/internal/testutil"
	"github.com/keymesh/keymesh/proxy"
)

// metricsText returns e's /metrics.
func metricsText(e *edge.Node) string {
	rec := httptest.NewRecorder()
	e.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return rec.Body.String()
}

// freePort returns a port nothing listens on (for a listener that must be
// named before it starts).
func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).AddrPort().String()[len("127.0.0.1:"):]
}

// The edge's own listeners and link-local / cloud-metadata addresses are
// never an upstream, whatever a deployment says and whatever a name
// resolves to: 502, counted, and nothing is sent there.
func TestUpstreamPolicyRefusesOwnListenersAndMetadata(t *testing.T) {
	s := newStack(t)
	admin := "127.0.0.1:" + freePort(t)
	cfg := edge.DefaultConfig()
	cfg.Listen = "127.0.0.1:" + freePort(t)
	cfg.AdminListen = admin
	cfg.NATSURL = s.nats.ClientURL()
	cfg.NATSCreds = s.natsCreds(natsauth.RoleEdge, "policy-edge")
	cfg.DataDir = ""
	cfg.OriginPublicKey = s.origin.PublicKey()
	cfg.Logger = s.logs.logger()
	cfg.UpstreamConnectTimeout = time.Second
	e, err := edge.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = e.ListenAndServe() }()
	t.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	<-e.Synced()
	testutil.CheckFor(t, 5*time.Second, 0, func() error {
		if e.Addr() == "" {
			return errors.New("not listening")
		}
		if resp, err := http.Get("http://" + admin + "/health"); err != nil {
			return err
		} else {
			resp.Body.Close()
		}
		return nil
	})
	_, port, _ := net.SplitHostPort(e.Addr())
	_, adminPort, _ := net.SplitHostPort(admin)

	// The origin refuses the unspecified and metadata addresses by default;
	// an admin naming them in the project's policy lets them through, so
	// that what is tested here is the edge's own refusal, the last line.
	if _, err := s.api.Do(context.Background(), http.MethodPost, "/v1/projects/"+project+"/deployments",
		map[string]any{"name": "meta", "hosts": []string{"meta.test"}, "upstreams": map[string][]string{"*": {"http://169.254.169.254"}}}, nil); err == nil ||
		!strings.Contains(err.Error(), "PERMISSION_DENIED") {
		t.Fatalf("origin accepted a metadata upstream by default: %v", err)
	}
	s.call(http.MethodPatch, "/v1/projects/"+project, map[string]any{"allowed_upstreams": []string{
		"127.0.0.0/8", "http://localhost:*", "0.0.0.0/32", "169.254.169.254/32", "fd00:ec2::254/128"}}, nil)

	var rev uint64
	var keys []string
	for i, up := range []string{
		"http://" + e.Addr(),                     // the public listener: a loop
		"http://" + admin,                        // pprof and /metrics through the public port
		"http://localhost:" + adminPort,          // the same, by a name that resolves to it
		"http://0.0.0.0:" + port,                 // the unspecified address reaches this host
		"http://[::ffff:127.0.0.1]:" + adminPort, // IPv4-mapped
		"http://169.254.169.254",                 // cloud metadata
		"http://[fd00:ec2::254]",                 // AWS metadata over IPv6
	} {
		host := fmt.Sprintf("up%d.test", i)
		var d struct {
			ID       string `json:"id"`
			Revision uint64 `json:"revision"`
		}
		rev = s.call(http.MethodPost, "/v1/projects/"+project+"/deployments",
			map[string]any{"name": fmt.Sprintf("up%d", i), "hosts": []string{host}, "auth_enabled": false, "upstreams": map[string][]string{"*": {up}}}, &d)
		keys = append(keys, host)
	}
	waitApplied(t, rev, e)
	for _, host := range keys {
		st, body := send(t, e, http.MethodGet, "/v1/models", map[string]string{"Host": host}, "")
		if st != http.StatusBadGateway || errorCode(t, body) != "UPSTREAM_ERROR" || !strings.Contains(body, "not an address this edge may connect to") {
			t.Errorf("%s: %d %s", host, st, body)
		}
	}
	m := metricsText(e)
	for _, want := range []string{`keymesh_edge_upstream_denied_total{reason="own_listener"} 5`,
		`keymesh_edge_upstream_denied_total{reason="denied_address"} 2`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// --upstream-allow bounds the upstreams: by the address connected to (a
// CIDR) or by the URL's host (a name); a name that is allowed still cannot
// resolve to a denied address; a pattern naming the edge's own listener
// stops the edge from starting.
func TestUpstreamAllow(t *testing.T) {
	s := newStack(t)
	u, _ := url.Parse(s.upstream.URL())
	_, upPort, _ := net.SplitHostPort(u.Host)
	byIP := s.deployment("by-ip", map[string]any{"hosts": []string{"ip.test"}})
	byName := s.deployment("by-name", map[string]any{"hosts": []string{"name.test"},
		"upstreams": map[string][]string{"*": {"http://localhost:" + upPort}}})
	k := s.key(byIP.ID, byName.ID)
	ask := func(e *edge.Node, host string) int {
		st, _ := send(t, e, http.MethodGet, "/v1/models", map[string]string{"Host": host, "X-API-Key": k.Secret}, "")
		return st
	}
	for _, tt := range []struct {
		allow        []string
		ip, name     int
		deniedMetric string
	}{
		{nil, 200, 200, ""},
		{[]string{"10.0.0.0/8"}, 502, 502, `reason="not_allowed"} 2`},
		{[]string{"127.0.0.1"}, 200, 200, ""},                        // localhost resolves to it
		{[]string{"localhost"}, 502, 200, `reason="not_allowed"} 1`}, // a name pattern: the URL's host
		{[]string{"http://localhost:" + upPort}, 502, 200, ""},
		{[]string{"https://localhost"}, 502, 502, `reason="not_allowed"} 2`}, // wrong scheme and port
		{[]string{"*.example.com", "127.0.0.0/8"}, 200, 200, ""},
	} {
		e := s.startEdge(edgeOpts{configure: func(c *edge.Config) { c.UpstreamAllow = tt.allow }})
		if ip, name := ask(e, "ip.test"), ask(e, "name.test"); ip != tt.ip || name != tt.name {
			t.Errorf("--upstream-allow %v: by IP %d (want %d), by name %d (want %d)", tt.allow, ip, tt.ip, name, tt.name)
		}
		if tt.deniedMetric != "" && !strings.Contains(metricsText(e), tt.deniedMetric) {
			t.Errorf("--upstream-allow %v: metrics lack %s", tt.allow, tt.deniedMetric)
		}
	}

	// A name the policy allows that resolves to the edge's own listener.
	e := s.startEdge(edgeOpts{configure: func(c *edge.Config) { c.UpstreamAllow = []string{"localhost"} }})
	_, port, _ := net.SplitHostPort(e.Addr())
	rev := s.call(http.MethodPost, "/v1/projects/"+project+"/deployments", map[string]any{"name": "self",
		"hosts": []string{"self.test"}, "upstreams": map[string][]string{"*": {"http://localhost:" + port}}, "auth_enabled": false}, nil)
	waitApplied(t, rev, e)
	if st := ask(e, "self.test"); st != http.StatusBadGateway {
		t.Fatalf("an allowed name resolving to the edge itself: %d", st)
	}

	// Naming an own listener in --upstream-allow is a mistake: refused at start.
	admin := "127.0.0.1:" + freePort(t)
	for _, allow := range []string{admin, "localhost:" + admin[len("127.0.0.1:"):]} {
		cfg := edge.DefaultConfig()
		cfg.AdminListen = admin
		cfg.NATSURL = s.nats.ClientURL()
		cfg.NATSCreds = s.natsCreds(natsauth.RoleEdge, "policy-edge")
		cfg.DataDir = ""
		cfg.OriginPublicKey = s.origin.PublicKey()
		cfg.UpstreamAllow = []string{allow}
		if e, err := edge.New(cfg); !errors.Is(err, proxy.ErrUpstreamPolicy) {
			if e != nil {
				_ = e.Shutdown(context.Background())
			}
			t.Errorf("--upstream-allow %s with --admin-listen %s: %v", allow, admin, err)
		}
	}
}
