package natsauth

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/event"
)

// An edge's credential publishes its usage records into the usage stream
// and gets the PubAck, as the edge's publisher does (Nats-Msg-Id, expected
// stream, synchronous and asynchronous), with no JetStream API permission
// beyond those it has: the publish goes to its own usage subject and the
// ack comes to its own inbox. Another edge's subject stays refused.
func TestEdgeCredentialsPublishUsageToStream(t *testing.T) {
	k, err := LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true}
	if err := k.ServerOptions(opts); err != nil {
		t.Fatal(err)
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	connect := func(role Role, id string, extra ...nats.Option) jetstream.JetStream {
		t.Helper()
		creds, err := k.Creds(role, id)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "c.creds")
		if err := os.WriteFile(path, creds, 0o600); err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(ns.ClientURL(), append(extra, nats.UserCredentials(path))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	ctx := context.Background()
	st, err := connect(RoleOrigin, "").CreateStream(ctx, jetstream.StreamConfig{Name: event.UsageStreamName,
		Subjects: []string{event.UsageStreamSubjects}, Duplicates: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	edge := connect(RoleEdge, "e1", nats.CustomInboxPrefix(event.EdgeInbox("e1")),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})) // the refusal below is expected
	subject := event.EdgeSubject(event.EdgeUsageSubject, "e1")
	msg := func(subject, id string) *nats.Msg {
		return &nats.Msg{Subject: subject, Data: []byte(`{"id":"` + id + `"}`)}
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ack, err := edge.PublishMsg(pctx, msg(subject, "u1"), jetstream.WithMsgID("u1"), jetstream.WithExpectStream(event.UsageStreamName))
	if err != nil || ack.Stream != event.UsageStreamName || ack.Duplicate {
		t.Fatalf("publish: %+v %v", ack, err)
	}
	f, err := edge.PublishMsgAsync(msg(subject, "u2"), jetstream.WithMsgID("u2"), jetstream.WithExpectStream(event.UsageStreamName))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.Ok():
	case err := <-f.Err():
		t.Fatalf("async publish: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no PubAck for the async publish")
	}
	if ack, err := edge.PublishMsg(pctx, msg(subject, "u1"), jetstream.WithMsgID("u1")); err != nil || !ack.Duplicate {
		t.Fatalf("publishing u1 again: %+v %v", ack, err)
	}
	short, cancel2 := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel2()
	if _, err := edge.PublishMsg(short, msg(event.EdgeSubject(event.EdgeUsageSubject, "e2"), "u3"), jetstream.WithMsgID("u3")); err == nil {
		t.Fatal("edge e1 published on edge e2's usage subject")
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Fatalf("%d messages in the usage stream, want 2", info.State.Msgs)
	}
}
