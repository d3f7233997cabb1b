package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestParseEnvThenArgs(t *testing.T) {
	env := map[string]string{"EDGE_NATS_URL": "nats://env:4222", "EDGE_SITE": "eu"}
	fs := flag.NewFlagSet("edge", flag.ContinueOnError)
	nats := fs.String("nats-url", "nats://default", "")
	site := fs.String("site", "default", "")
	if err := Parse(fs, "EDGE", []string{"--site", "us"}, func(k string) string { return env[k] }, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if *nats != "nats://env:4222" || *site != "us" {
		t.Fatalf("env then args: nats=%s site=%s", *nats, *site)
	}
	var out bytes.Buffer
	fs = flag.NewFlagSet("edge", flag.ContinueOnError)
	fs.String("nats-url", "x", "where events come from")
	if err := Parse(fs, "EDGE", []string{"--help"}, func(string) string { return "" }, &out); !errors.Is(err, ErrHelp) ||
		!strings.Contains(out.String(), "EDGE_NATS_URL") || !strings.Contains(out.String(), "where events come from") {
		t.Fatalf("help: %v %q", err, out.String())
	}
	fs = flag.NewFlagSet("edge", flag.ContinueOnError)
	fs.Duration("timeout", time.Second, "")
	err := Parse(fs, "EDGE", nil, func(k string) string { return map[string]string{"EDGE_TIMEOUT": "soon"}[k] }, &out)
	if err == nil || !strings.HasPrefix(err.Error(), "EDGE_TIMEOUT:") {
		t.Fatalf("bad env value: %v", err)
	}
}

func TestDrainExitCodes(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	if Drain(log, time.Second, func(context.Context) error { return nil }) != 0 {
		t.Fatal("clean drain")
	}
	if Drain(log, time.Millisecond, func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }) != 0 {
		t.Fatal("a drain cut by its deadline is still a clean stop")
	}
	if Drain(log, time.Second, func(context.Context) error { return errors.New("boom") }) != 1 {
		t.Fatal("failed shutdown")
	}
}
