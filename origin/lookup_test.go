package origin

import (
	"crypto/sha256"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
)

func request(t *testing.T, nc *nats.Conn, subj string, data []byte) *event.Record {
	t.Helper()
	return requestV(t, nc, subj, data, nil)
}

func requestV(t *testing.T, nc *nats.Conn, subj string, data []byte, s *Server) *event.Record {
	t.Helper()
	m, err := nc.Request(subj, data, 5*time.Second)
	if err != nil {
		t.Fatalf("request %s: %v", subj, err)
	}
	if reason := m.Header.Get(event.ErrorHeader); reason != "" {
		t.Fatalf("lookup error: %s", reason)
	}
	v, _ := event.NewVerifier(s.PublicKey())
	r, err := v.Open(m.Data)
	if err != nil {
		t.Fatalf("reply does not verify: %v", err)
	}
	return r
}

func TestLookupResponders(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	var dep depResp
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, &dep)
	var k keyResp
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"deployments": []string{dep.ID}, "permissions": []string{"run_inference"}}, &k)
	nc := connect(t, s)
	h, _ := apikey.ParseString(*k.Key)

	r := requestV(t, nc, event.LookupKeySubject, h[:], s)
	if r.Kind != event.KindKey || r.Revision != 2 || r.Key.ID != k.ID || !slices.Equal(r.Key.Deployments, []string{dep.ID}) ||
		!slices.Equal(r.Key.Permissions, []string{"run_inference"}) || !r.Key.Secrets[0].Hash.Equal(h) {
		t.Fatalf("lookup: %+v %+v", r, r.Key)
	}
	// The reply's revision is the current one, not the key's.
	c.must(201, "POST", "/v1/projects/default/deployments", map[string]any{"name": "other", "upstreams": map[string][]string{"*": {"http://x:1"}}}, nil)
	if r := requestV(t, nc, event.LookupKeySubject, h[:], s); r.Revision != 3 {
		t.Fatalf("lookup revision %d, want 3", r.Revision)
	}

	unknown := sha256.Sum256([]byte("nope"))
	r = requestV(t, nc, event.LookupKeySubject, unknown[:], s)
	if r.Kind != event.KindKeyNotFound || r.Hash == nil || *r.Hash != apikey.Hash(unknown) || r.Revision != 3 {
		t.Fatalf("unknown hash: %+v", r)
	}

	r = requestV(t, nc, event.SnapshotSubject, nil, s)
	if r.Kind != event.KindSnapshot || r.Revision != 3 || len(r.Deployments) != 2 {
		t.Fatalf("snapshot: %+v", r)
	}

	m, err := nc.Request(event.LookupKeySubject, []byte("short"), 5*time.Second)
	if err != nil || len(m.Data) != 0 || m.Header.Get(event.ErrorHeader) == "" {
		t.Fatalf("bad request: %v %q %v", err, m.Data, m.Header)
	}

	// Rotation: with a grace period the old secret still resolves; with none
	// it is answered as not found.
	var rot keyResp
	c.must(200, "POST", "/v1/projects/default/keys/"+k.ID+"/rotate", map[string]any{"grace_seconds": 3600}, &rot)
	h2, _ := apikey.ParseString(*rot.Key)
	if r := requestV(t, nc, event.LookupKeySubject, h[:], s); r.Kind != event.KindKey || len(r.Key.Secrets) != 2 {
		t.Fatalf("old secret in grace: %+v", r.Key)
	}
	c.must(200, "POST", "/v1/projects/default/keys/"+k.ID+"/rotate", nil, &rot)
	h3, _ := apikey.ParseString(*rot.Key)
	if r := requestV(t, nc, event.LookupKeySubject, h2[:], s); r.Kind != event.KindKeyNotFound {
		t.Fatalf("rotated secret without grace: %+v", r)
	}
	if r := requestV(t, nc, event.LookupKeySubject, h3[:], s); r.Kind != event.KindKey || r.Key.ID != k.ID {
		t.Fatalf("new secret: %+v", r)
	}
	recs := streamRecords(t, s, s.Revision())
	last := recs[len(recs)-1].Key
	for _, sec := range last.Secrets {
		if !sec.Hash.Equal(h3) && (sec.NotAfter == nil || sec.NotAfter.After(time.Now())) {
			t.Fatalf("rotation event keeps an old secret alive: %+v", last.Secrets)
		}
	}
}
