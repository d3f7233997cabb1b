package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/edge"
)

// testCA signs certificates for the TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T) *testCA {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "keymesh test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes a certificate and key for cn to dir and returns their paths.
func (ca *testCA) issue(t *testing.T, dir, cn string, serial int64, usage x509.ExtKeyUsage) (string, string) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certPath, keyPath := filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

func tlsClient(ca *testCA, cert *tls.Certificate, maxVersion uint16) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	cfg := &tls.Config{RootCAs: pool, MaxVersion: maxVersion}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
}

func tlsChat(c *http.Client, addr, key string) (*http.Response, error) {
	req, _ := http.NewRequest(http.MethodPost, "https://"+addr+"/v1/chat/completions", strings.NewReader(chatBody))
	req.Header.Set("X-API-Key", key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err == nil {
		resp.Body.Close()
	}
	return resp, err
}

func TestTLSMutualAndReload(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	dir := t.TempDir()
	ca := newCA(t)
	certPath, keyPath := ca.issue(t, dir, "edge", 2, x509.ExtKeyUsageServerAuth)
	caPath := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caPath, ca.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	ccert, ckey := ca.issue(t, dir, "client", 3, x509.ExtKeyUsageClientAuth)
	clientCert, err := tls.LoadX509KeyPair(ccert, ckey)
	if err != nil {
		t.Fatal(err)
	}
	e := s.startEdge(edgeOpts{configure: func(c *edge.Config) {
		c.TLSCert, c.TLSKey, c.TLSClientCA = certPath, keyPath, caPath
	}})

	resp, err := tlsChat(tlsClient(ca, &clientCert, 0), e.Addr(), k.Secret)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("mutual TLS: %v %v", err, resp)
	}
	if resp.TLS == nil || resp.TLS.PeerCertificates[0].SerialNumber.Int64() != 2 {
		t.Fatal("not served with the configured certificate")
	}
	if _, err := tlsChat(tlsClient(ca, nil, 0), e.Addr(), k.Secret); err == nil {
		t.Fatal("a client without a certificate was served")
	}
	if _, err := tlsChat(tlsClient(ca, &clientCert, tls.VersionTLS11), e.Addr(), k.Secret); err == nil {
		t.Fatal("TLS 1.1 accepted")
	}
	if _, err := httpClient.Get("http://" + e.Addr() + "/health"); err == nil {
		t.Fatal("plain HTTP accepted on a TLS listener")
	}

	// A renewed certificate is picked up on reload, without a restart.
	ca.issue(t, dir, "edge", 4, x509.ExtKeyUsageServerAuth)
	if err := e.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	resp, err = tlsChat(tlsClient(ca, &clientCert, 0), e.Addr(), k.Secret)
	if err != nil || resp.TLS.PeerCertificates[0].SerialNumber.Int64() != 4 {
		t.Fatalf("after reload: %v", err)
	}
	// A broken file on reload keeps the working certificate.
	if err := os.WriteFile(certPath, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.ReloadTLS(); err == nil {
		t.Fatal("a broken certificate was accepted")
	}
	if resp, err := tlsChat(tlsClient(ca, &clientCert, 0), e.Addr(), k.Secret); err != nil || resp.StatusCode != 200 {
		t.Fatalf("after a failed reload: %v", err)
	}
}

func TestCORS(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{configure: func(c *edge.Config) {
		c.CORSAllowedOrigins = []string{"https://app.example.com"}
	}})
	pre := func(origin string) *http.Response {
		req, _ := http.NewRequest(http.MethodOptions, "http://"+e.Addr()+"/v1/chat/completions", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization, content-type")
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	resp := pre("https://app.example.com") // no key: preflights never carry one
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Fatalf("allowed preflight: %d %v", resp.StatusCode, resp.Header)
	}
	if resp := pre("https://evil.example.com"); resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatal("preflight from an origin not allowed was allowed")
	}
	// Real requests, answered or refused, are readable by the allowed origin.
	for _, key := range []string{k.Secret, "bad"} {
		req, _ := http.NewRequest(http.MethodPost, "http://"+e.Addr()+"/v1/chat/completions", strings.NewReader(chatBody))
		req.Header.Set("Origin", "https://app.example.com")
		req.Header.Set("X-API-Key", key)
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
			t.Fatalf("%d response without CORS headers", resp.StatusCode)
		}
	}
}
