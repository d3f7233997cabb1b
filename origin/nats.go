package origin

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

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
// a client that reconnects forever.
func (s *Server) startNATS() error {
	natsURL := s.cfg.NATSURL
	if natsURL == "" {
		host, port, err := splitNATSListen(s.cfg.NATSListen)
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
		ns, err := server.NewServer(opts)
		if err != nil {
			return fmt.Errorf("starting embedded nats: %w", err)
		}
		ns.Start()
		s.ns = ns
		if !ns.ReadyForConnections(10 * time.Second) {
			return fmt.Errorf("embedded nats did not become ready on %s", s.cfg.NATSListen)
		}
		natsURL = ns.ClientURL()
	}
	s.natsURL = natsURL
	log := s.log
	nc, err := nats.Connect(natsURL,
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
	)
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
