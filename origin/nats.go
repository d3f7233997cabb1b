package origin

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/internal/natsauth"
	"github.com/keymesh/keymesh/internal/redact"
)

// natsServer is the part of the embedded server the origin uses.
type natsServer interface {
	Shutdown()
	WaitForShutdown()
}

// splitNATSListen parses host:port; port "-1" means a random port (nats
// treats 0 as its default 4222).
func splitNATSListen(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%w: NATSListen %q: want host:port", ErrInvalidConfig, addr)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < -1 || port > 65535 {
		return "", 0, fmt.Errorf("%w: NATSListen %q: bad port", ErrInvalidConfig, addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

// startNATS starts the embedded server (unless NATSURL is set) and connects
// a client that reconnects forever. The embedded server always requires
// credentials (package natsauth): it trusts the operator under DataDir and
// the origin connects with an origin credential it issues itself.
func (s *Server) startNATS() error {
	natsURL := s.cfg.NATSURL
	var auth []nats.Option
	if natsURL == "" {
		host, port, err := splitNATSListen(s.cfg.NATSListen)
		if err != nil {
			return err
		}
		keys, err := natsauth.LoadOrCreate(s.cfg.DataDir)
		if err != nil {
			return err
		}
		opts := &server.Options{
			ServerName: "keymesh-origin",
			Host:       host,
			Port:       port,
			JetStream:  true,
			StoreDir:   filepath.Join(s.cfg.DataDir, "nats"),
			NoLog:      true,
			NoSigs:     true,
			MaxPayload: 8 << 20,
		}
		if err := keys.ServerOptions(opts); err != nil {
			return fmt.Errorf("embedded nats auth: %w", err)
		}
		if s.cfg.NATSTLSCert != "" {
			tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: s.cfg.NATSTLSCert, KeyFile: s.cfg.NATSTLSKey})
			if err != nil {
				return fmt.Errorf("embedded nats tls: %w", err)
			}
			opts.TLS, opts.TLSConfig = true, tc
			// The origin's own connection pins the served certificate.
			leaf := tc.Certificates[0].Certificate[0]
			auth = append(auth, nats.Secure(&tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true, //nolint:gosec // pinned below
				VerifyConnection: func(cs tls.ConnectionState) error {
					if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, leaf) {
						return errors.New("embedded nats presented another certificate")
					}
					return nil
				}}))
		}
		tok, seed, err := keys.UserJWT(natsauth.RoleOrigin, "origin")
		if err != nil {
			return err
		}
		auth = append(auth, nats.UserJWTAndSeed(tok, string(seed)))
		ns, err := server.NewServer(opts)
		if err != nil {
			return fmt.Errorf("starting embedded nats: %w", err)
		}
		ns.Start()
		s.ns = ns
		if !ns.ReadyForConnections(10 * time.Second) {
			return fmt.Errorf("embedded nats did not become ready on %s", s.cfg.NATSListen)
		}
		natsURL = ns.ClientURL() // tls:// when serving TLS
	} else {
		opts, err := natsauth.ClientOptions(s.cfg.NATSCreds, s.cfg.NATSTLSCA, s.cfg.NATSTLSCert, s.cfg.NATSTLSKey)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		auth = opts
	}
	s.natsURL = natsURL
	log := s.log
	nc, err := nats.Connect(natsURL, append(auth,
		nats.Name("keymesh-origin"),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(250*time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("nats error", "err", err) // permission violations land here
		}),
	)...)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			// url.Error quotes the whole URL, password included.
			err = fmt.Errorf("cannot parse the NATS URL %s: %w", redact.URLs(natsURL), ue.Err)
		}
		return fmt.Errorf("connecting to nats: %w", err)
	}
	s.nc = nc
	return nil
}

// NATSCreds issues a NATS .creds file for role (natsauth.RoleOrigin or
// natsauth.RoleEdge with the edge's id) from the keys under DataDir. The
// content is secret.
func (s *Server) NATSCreds(role natsauth.Role, id string) ([]byte, error) {
	keys, err := natsauth.Load(s.cfg.DataDir)
	if err != nil {
		return nil, err
	}
	return keys.Creds(role, id)
}
