package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keymesh/keymesh/bench"
	"github.com/keymesh/keymesh/internal/testutil"
)

// TestMain lets a test run this binary's main by re-executing the test
// binary with ORIGIN_TEST_MAIN=1.
func TestMain(m *testing.M) {
	if os.Getenv("ORIGIN_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

const processPassword = "fault-test-admin-password"

type originProcess struct {
	cmd     *exec.Cmd
	base    string // http://listen
	stderr  *testutil.Buffer
	exited  chan error
	natsURL string
}

// startOriginProcess runs this package's main as a child process on dir,
// with the embedded NATS on a random port, and waits until it serves. It
// is stopped (SIGTERM) when t ends, unless kill was called.
func startOriginProcess(t *testing.T, dir string) *originProcess {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := ln.Addr().String()
	ln.Close()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := &originProcess{base: "http://" + listen, stderr: &testutil.Buffer{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(exe, "--data-dir", dir, "--listen", listen, "--nats-listen", "127.0.0.1:-1")
	p.cmd.Env = append(os.Environ(), "ORIGIN_TEST_MAIN=1", "ORIGIN_ADMIN_PASSWORD="+processPassword)
	p.cmd.Stderr, p.cmd.Stdout = p.stderr, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("origin output:\n%s", p.stderr.String())
		}
	})
	testutil.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		out := p.stderr.String()
		i := strings.Index(out, "origin started")
		if i < 0 {
			return errors.New("origin not started")
		}
		m := natsURLRE.FindStringSubmatch(out[i:])
		if m == nil {
			return errors.New("no nats URL in the start line")
		}
		p.natsURL = m[1]
		return nil
	})
	return p
}

var natsURLRE = regexp.MustCompile(`nats=(nats://\S+)`)

// kill ends the process with SIGKILL: nothing is flushed.
func (p *originProcess) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	p.exited <- errors.New("killed") // for the cleanup
}

// Issue 12.4 with a real origin process: its embedded JetStream store is a
// 4 MiB tmpfs, filled to ENOSPC. Changes keep committing while publishing
// fails; once the space is back the process publishes all of them, without
// a restart (it restarts its embedded JetStream, whose stream otherwise
// keeps its write error for good).
func TestOriginProcessRecoversFromFullJetStreamDisk(t *testing.T) {
	dir := t.TempDir()
	natsDir := filepath.Join(dir, "nats")
	testutil.SmallDisk(t, natsDir, "4m")

	proc := startOriginProcess(t, dir)
	base := proc.base
	api := &bench.OriginClient{BaseURL: base}
	ctx := context.Background()
	if err := api.Login(ctx, "admin", processPassword); err != nil {
		t.Fatal(err)
	}
	type health struct {
		Status            string `json:"status"`
		Reason            string `json:"reason"`
		Revision          uint64 `json:"revision"`
		PublishedRevision uint64 `json:"published_revision"`
	}
	getHealth := func() (health, error) {
		var h health
		resp, err := http.Get(base + "/health")
		if err != nil {
			return h, err
		}
		defer resp.Body.Close()
		return h, json.NewDecoder(resp.Body).Decode(&h)
	}
	metric := func(name string) string {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				return v
			}
		}
		return ""
	}

	d, err := api.EnsureDeployment(ctx, "default", "demo", []string{"http://127.0.0.1:9"})
	if err != nil {
		t.Fatal(err)
	}
	freeDisk := testutil.FillDisk(t, natsDir)
	for i := range 20 {
		if _, err := api.CreateKey(ctx, "default", fmt.Sprintf("k%d-%s", i, strings.Repeat("x", 150)), d.ID); err != nil {
			t.Fatalf("key %d not committed on a full JetStream disk: %v", i, err)
		}
	}
	testutil.CheckFor(t, 90*time.Second, 50*time.Millisecond, func() error {
		if v := metric("keymesh_origin_publish_errors_total"); v == "" || v == "0" {
			return fmt.Errorf("publish errors %q on a full disk", v)
		}
		return nil
	})
	h, err := getHealth()
	if err != nil || h.PublishedRevision >= h.Revision {
		t.Fatalf("health on a full disk: %+v %v", h, err)
	}
	t.Logf("disk full: committed %d, published %d", h.Revision, h.PublishedRevision)

	freeDisk()
	freed := time.Now()
	testutil.CheckFor(t, 90*time.Second, 50*time.Millisecond, func() error {
		h, err := getHealth()
		if err != nil {
			return err
		}
		if h.PublishedRevision != h.Revision || h.Status != "ok" {
			return fmt.Errorf("health %+v", h)
		}
		return nil
	})
	t.Logf("caught up %v after space was freed; jetstream restarts %s", time.Since(freed).Round(time.Millisecond),
		metric("keymesh_origin_jetstream_restarts_total"))
	select {
	case err := <-proc.exited:
		t.Fatalf("origin exited: %v", err)
	default:
	}
}
