package origin

import (
	"errors"
	"path/filepath"

	"github.com/nats-io/nats-server/v2/server"
)

// healJetStream repairs the embedded JetStream for the publisher (see
// publisher.heal): when JetStream is disabled (nats-server turns it off on
// some storage errors) it enables it again; when a stream or the server
// reports a write error (nats-server keeps a stream's first write error,
// e.g. "no space left on device", and refuses every later message, even
// once the disk has room again) it shuts JetStream down and starts it
// again, which reopens the streams from disk. Connections stay up; edges'
// consumers are recreated by their clients. It returns why it restarted
// ("" when JetStream was healthy) and does nothing for an external NATS.
func (s *Server) healJetStream() (string, error) {
	ns, ok := s.ns.(*server.Server)
	if !ok || ns == nil {
		return "", nil
	}
	var why string
	cfg := ns.JetStreamConfig()
	if ns.JetStreamEnabled() {
		hs := ns.Healthz(&server.HealthzOptions{})
		if hs == nil || hs.Error == "" {
			return "", nil
		}
		why = hs.Error
		if err := ns.ShutdownJetStream(); err != nil {
			return "", err
		}
	} else {
		why = "JetStream is disabled"
	}
	if cfg == nil {
		// Disabled before we could read its configuration: the one
		// startNATS gives it.
		cfg = &server.JetStreamConfig{StoreDir: filepath.Join(s.cfg.DataDir, "nats")}
	}
	c := *cfg
	// EnableJetStream adds the "jetstream" directory to StoreDir itself.
	if filepath.Base(c.StoreDir) == server.JetStreamStoreDir {
		c.StoreDir = filepath.Dir(c.StoreDir)
	}
	if err := ns.EnableJetStream(&c); err != nil {
		return "", errors.Join(errors.New(why), err)
	}
	return why, nil
}
