package edge

import (
	"bufio"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAuditFullBufferDropsWithoutBlocking(t *testing.T) {
	a, err := newAuditor(nil, "e1", 2, "", time.Hour, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	rec := []byte(`{"status":200}`)
	done := make(chan struct{})
	go func() {
		for range 1000 {
			a.Record(rec)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Record blocked on a full buffer")
	}
	if got := a.dropped.Load(); got != 998 {
		t.Fatalf("dropped %d, want 998", got)
	}
	if n := len(a.pending.ends); n != 2 {
		t.Fatalf("queued %d, want 2", n)
	}
}

// Record copies the record into the pending batch without allocating
// (once the batch has grown): the request path pays a copy.
func TestAuditRecordCopiesWithoutAllocating(t *testing.T) {
	a, err := newAuditor(nil, "e1", 100_000, "", time.Hour, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	rec := []byte(`{"status":200,"path":"/v1/chat/completions"}`)
	a.Record(rec)
	rec[2] = 'X' // the caller's buffer is reused at once
	if n := testing.AllocsPerRun(200, func() { a.Record(rec) }); n != 0 {
		t.Fatalf("Record allocates %v times, want 0", n)
	}
	if got := string(a.pending.buf[:a.pending.ends[0]]); got != `{"status":200,"path":"/v1/chat/completions"}` {
		t.Fatalf("queued %s: the record was not copied", got)
	}
}

// Records still queued when the auditor shuts down are written to the
// audit file, one JSON line each, in a file only the edge can read.
func TestAuditFileShippedOnShutdown(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	a, err := newAuditor(nil, "edge-7", 100, path, time.Hour, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a.start()
	want := []string{`{"edge":"edge-7","status":200}`, `{"edge":"edge-7","status":401}`, `{"edge":"edge-7","status":404}`}
	for _, r := range want {
		a.Record([]byte(r))
	}
	// The flush interval is an hour: only shutdown writes these.
	a.shutdown(true)

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("audit file mode %v", fi.Mode().Perm())
	}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for sc.Scan() {
		if !json.Valid(sc.Bytes()) {
			t.Fatalf("line %q is not JSON", sc.Text())
		}
		lines = append(lines, sc.Text())
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audit file:\n%s\nwant:\n%s", raw, strings.Join(want, "\n"))
	}
}

func TestEdgeIDDefaults(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Listen: "127.0.0.1:0"}
	id1, err := edgeID(&cfg)
	if err != nil || id1 == "" {
		t.Fatalf("edgeID: %q %v", id1, err)
	}
	if id2, _ := edgeID(&cfg); id2 != id1 {
		t.Fatalf("persisted id changed: %q then %q", id1, id2)
	}
	cfg = Config{Listen: "127.0.0.1:0"}
	a, _ := edgeID(&cfg)
	b, _ := edgeID(&cfg)
	if a == b {
		t.Fatalf("two edges on random ports share id %q", a)
	}
	cfg = Config{Listen: "127.0.0.1:8080"}
	if id, _ := edgeID(&cfg); !strings.HasSuffix(id, "/127.0.0.1:8080") {
		t.Fatalf("id %q", id)
	}
	cfg = Config{ID: "eu-1"}
	if id, _ := edgeID(&cfg); id != "eu-1" {
		t.Fatalf("id %q", id)
	}
}
