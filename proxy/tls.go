package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
)

// certStore holds the serving certificate and swaps it on Reload, so a
// renewed certificate takes effect for new connections without a restart.
type certStore struct {
	certFile, keyFile string
	cert              atomic.Pointer[tls.Certificate]
}

func (c *certStore) load() error {
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("loading TLS certificate: %w", err)
	}
	c.cert.Store(&cert)
	return nil
}

func (c *certStore) get(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.cert.Load(), nil }

// newTLSConfig builds the listener's TLS configuration: TLS 1.2 at least,
// and client certificates required and verified against clientCA if given.
func newTLSConfig(certFile, keyFile, clientCA string) (*tls.Config, *certStore, error) {
	if certFile == "" || keyFile == "" {
		return nil, nil, errors.New("TLS needs both a certificate and a key file")
	}
	cs := &certStore{certFile: certFile, keyFile: keyFile}
	if err := cs.load(); err != nil {
		return nil, nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: cs.get}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		if err != nil {
			return nil, nil, fmt.Errorf("reading client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("client CA %s holds no PEM certificate", clientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, cs, nil
}

// ReloadTLS reads the certificate and key files again; on error the
// current certificate stays in use. It does nothing without TLS.
func (s *Proxy) ReloadTLS() error {
	if s.certs == nil {
		return nil
	}
	return s.certs.load()
}
