package e2e

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	kmstack "github.com/keymesh/keymesh/internal/stack"
	"github.com/keymesh/keymesh/internal/testutil"
)

// Issue 12.4, end to end: an origin with its embedded NATS, whose JetStream
// store is a small tmpfs, and an edge on that NATS. The disk fills up, a key
// is disabled (committed, not published), space comes back: without any
// restart the edge applies the change and refuses the key, and later
// changes keep reaching it (its consumer survived the origin restarting
// the embedded JetStream).
func TestEdgeCatchesUpAfterJetStreamDiskWasFull(t *testing.T) {
	dataDir := t.TempDir()
	natsDir := filepath.Join(dataDir, "nats")
	testutil.SmallDisk(t, natsDir, "4m")

	// The embedded NATS trusts the operator the origin created in its data
	// dir: the edge's credential comes from there.
	s := newStackWith(t, kmstack.Config{OriginDir: dataDir})
	o := s.origin
	defer func() {
		if t.Failed() {
			t.Logf("logs:\n%s", s.logs.String())
		}
	}()

	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})
	expect(t, e, withKey(k), 200, "")

	freeDisk := testutil.FillDisk(t, natsDir)

	keyPath := "/v1/projects/" + project + "/keys/" + k.ID
	var rev uint64
	for i := range 10 { // enough to hit the full disk, the last one disables the key
		rev = s.call(http.MethodPatch, keyPath, map[string]any{"description": fmt.Sprintf("change %d", i), "disabled": i == 9}, nil)
	}
	testutil.CheckFor(t, 90*time.Second, 0, func() error {
		if p := o.PublishedRevision(); p >= rev {
			return fmt.Errorf("revision %d published on a full disk", p)
		}
		resp, err := http.Get("http://" + o.Addr() + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if strings.Contains(string(b), "keymesh_origin_publish_errors_total 0\n") {
			return errors.New("publishing has not failed yet")
		}
		return nil
	})

	freeDisk()
	freed := time.Now()
	testutil.CheckFor(t, 90*time.Second, 0, func() error {
		if p := o.PublishedRevision(); p < rev {
			return fmt.Errorf("origin published %d of %d", p, rev)
		}
		return nil
	})
	t.Logf("origin published revision %d %v after space was freed", rev, time.Since(freed).Round(time.Millisecond))
	testutil.CheckFor(t, 90*time.Second, 0, func() error {
		if got := e.View().AppliedRevision(); got < rev {
			return fmt.Errorf("edge applied %d, want %d (origin published %d)", got, rev, o.PublishedRevision())
		}
		return nil
	})
	t.Logf("edge applied revision %d %v after space was freed", rev, time.Since(freed).Round(time.Millisecond))
	expect(t, e, withKey(k), 401, "")

	rev = s.call(http.MethodPatch, keyPath, map[string]any{"disabled": false}, nil)
	testutil.CheckFor(t, 30*time.Second, 0, func() error {
		if got := e.View().AppliedRevision(); got < rev {
			return fmt.Errorf("edge applied %d, want %d", got, rev)
		}
		return nil
	})
	expect(t, e, withKey(k), 200, "")
}
