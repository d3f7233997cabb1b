package origin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/event"
)

// startJetStreamCluster runs n JetStream servers on loopback, each with
// routes to all (JetStream clustering needs configured routes), and returns
// their client URLs.
func startJetStreamCluster(t *testing.T, n int) []string {
	t.Helper()
	// Route ports are reserved by listening and handed over at once: a
	// server with port -1 cannot be named in its peers' routes beforehand.
	var routes []*url.URL
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		ports = append(ports, port)
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", port)})
	}
	var urls []string
	for i := range n {
		ns, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("js-%d", i),
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoLog:      true,
			NoSigs:     true,
			Cluster:    server.ClusterOpts{Name: "test", Host: "127.0.0.1", Port: ports[i]},
			Routes:     routes,
		})
		if err != nil {
			t.Fatal(err)
		}
		ns.Start()
		t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
		if !ns.ReadyForConnections(10 * time.Second) {
			t.Fatalf("nats server %d not ready", i)
		}
		urls = append(urls, ns.ClientURL())
	}
	return urls
}

// With StreamReplicas 3 on a three-server cluster, the origin creates the
// event stream with three replicas and publishes to it.
func TestStreamReplicasOnACluster(t *testing.T) {
	urls := startJetStreamCluster(t, 3)
	cfg := testConfig(t.TempDir())
	cfg.NATSURL = strings.Join(urls, ",")
	cfg.StreamReplicas = 3
	s := startServer(t, cfg)
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)

	js, err := jetstream.New(connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	// The publisher retries until the cluster has elected its JetStream
	// leaders; this waits for the stream with the event in it.
	var info *jetstream.StreamInfo
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := js.Stream(ctx, event.StreamName)
		if err == nil {
			info, err = st.Info(ctx)
		}
		cancel()
		if err == nil && info.State.LastSeq >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the event stream did not receive revision 1 within 30s (last error: %v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if info.Config.Replicas != 3 {
		t.Fatalf("stream replicas %d, want 3", info.Config.Replicas)
	}
	if info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("stream cluster info %+v, want a leader and 2 replicas", info.Cluster)
	}
	waitFor(t, "revision 1 marked published", func() bool { return s.PublishedRevision() == 1 })
}

// The embedded server keeps the default of one replica.
func TestStreamReplicasDefaultIsOne(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	streamRecords(t, s, 1)
	js, err := jetstream.New(connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), event.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.CachedInfo().Config.Replicas; r != 1 {
		t.Fatalf("stream replicas %d, want 1", r)
	}
}

func TestStreamReplicasOutOfRange(t *testing.T) {
	for _, n := range []int{-1, 6} {
		cfg := testConfig(t.TempDir())
		cfg.StreamReplicas = n
		s, err := New(cfg)
		if err == nil {
			_ = s.Shutdown(context.Background())
			t.Fatalf("StreamReplicas %d accepted", n)
		}
		if !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("StreamReplicas %d: %v, want ErrInvalidConfig", n, err)
		}
	}
}
