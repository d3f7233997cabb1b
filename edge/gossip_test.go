package edge

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/internal/testutil"
)

// An edge without gossip peers does not send a key lookup into a NATS
// connection that is down: it would sit in the reconnect buffer until the
// lookup timed out, and every request for a stale key would wait that long
// during an origin outage.
func TestLookupWithoutPeersFailsFastWhileNATSDown(t *testing.T) {
	js := startJS(t)
	nc, err := nats.Connect(js.url(), nats.MaxReconnects(-1), nats.ReconnectWait(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js.stop()
	testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if nc.IsConnected() {
			return errors.New("still connected")
		}
		return nil
	})

	lookup := (&gossipHook{}).lookup(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = lookup(ctx, apikey.Hash{1})
	if !errors.Is(err, errNATSDown) {
		t.Fatalf("lookup while NATS is down: %v, want errNATSDown", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the lookup waited out its deadline")
	}
}
