package event

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
)

func newPair(t *testing.T) (*Signer, *Verifier) {
	t.Helper()
	priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSigner(priv)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(s.Public())
	if err != nil {
		t.Fatal(err)
	}
	return s, v
}

func TestSealOpen(t *testing.T) {
	s, v := newPair(t)
	k, _ := apikey.Generate()
	h, _ := apikey.ParseString(k)
	exp := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	in := &Record{Revision: 7, Kind: KindKey, Time: time.Unix(1, 0).UTC(), Key: &Key{
		ID: "k1", Project: "p", Secrets: []Secret{{Hash: h}}, Permissions: DefaultPermissions,
		Deployments: []string{"d1"}, ExpiresAt: &exp,
	}}
	wire, err := s.Seal(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := v.Open(wire)
	if err != nil {
		t.Fatal(err)
	}
	if out.Revision != 7 || out.Key.Secrets[0].Hash != h || !out.Key.ExpiresAt.Equal(exp) {
		t.Fatalf("round trip changed the record: %+v", out.Key)
	}
}

func TestOpenRefusesTampering(t *testing.T) {
	s, v := newPair(t)
	other, _ := newPair(t)
	rec := &Record{Revision: 1, Kind: KindKey, Key: &Key{ID: "k1", Deployments: []string{}}}
	wire, _ := s.Seal(rec)
	forged, _ := other.Seal(&Record{Revision: 1, Kind: KindKey, Key: &Key{ID: "k1", Deployments: []string{"d1"}}})

	flipped := append([]byte(nil), wire...)
	flipped[len(flipped)-3] ^= 1
	tests := []struct {
		name string
		wire []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"signature only", wire[:64], ErrMalformed},
		{"payload changed", flipped, ErrBadSignature},
		{"other key", forged, ErrBadSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := v.Open(tt.wire); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestParsePublicKey(t *testing.T) {
	s, _ := newPair(t)
	enc := EncodePublicKey(s.Public())
	path := filepath.Join(t.TempDir(), "pub")
	if err := os.WriteFile(path, []byte(enc+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{enc, "@" + path} {
		pub, err := ParsePublicKey(in)
		if err != nil || !pub.Equal(s.Public()) {
			t.Fatalf("%q: %v", in, err)
		}
	}
	for _, bad := range []string{"", "not base64!", "AAAA", "@" + path + ".missing"} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Fatalf("%q accepted", bad)
		}
	}
}

// A record's size does not depend on HTML-special characters: encoding/json
// would write each '<' as six bytes.
func TestSealDoesNotEscapeHTML(t *testing.T) {
	s, v := newPair(t)
	prefix := strings.Repeat("<>&", 1000)
	in := &Record{Revision: 1, Kind: KindDeployment, Time: time.Unix(1, 0).UTC(), Deployment: &Deployment{
		ID: "d", Project: "p", Name: "n", UpstreamAuth: &UpstreamAuth{Mode: UpstreamAuthInject, Prefix: prefix, Secret: "s"},
	}}
	wire, err := s.Seal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(wire, []byte(prefix)) {
		t.Fatalf("the payload escapes HTML characters (%d bytes for a %d-byte prefix)", len(wire), len(prefix))
	}
	if len(wire) > len(prefix)+1000 {
		t.Fatalf("payload is %d bytes for a %d-byte prefix", len(wire), len(prefix))
	}
	out, err := v.Open(wire)
	if err != nil {
		t.Fatal(err)
	}
	if out.Deployment.UpstreamAuth.Prefix != prefix {
		t.Fatal("round trip changed the prefix")
	}
	b, err := Marshal(map[string]string{"a": "<b>"})
	if err != nil || string(b) != `{"a":"<b>"}` {
		t.Fatalf("Marshal: %s %v", b, err)
	}
}

// A key's and a deployment's model allow-lists and concurrency caps, and
// the key's name, survive sealing: what the origin signs is what an edge
// enforces.
func TestSealOpenModelsAndConcurrency(t *testing.T) {
	s, v := newPair(t)
	in := &Record{Revision: 3, Kind: KindKey, Key: &Key{ID: "k1", Project: "p", Name: "ci", Deployments: []string{},
		Models: []string{"meta-llama/*", "mock-model"}, MaxConcurrency: 4}}
	wire, err := s.Seal(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := v.Open(wire)
	if err != nil {
		t.Fatal(err)
	}
	if k := out.Key; k.Name != "ci" || strings.Join(k.Models, ",") != "meta-llama/*,mock-model" || k.MaxConcurrency != 4 {
		t.Fatalf("key round trip: %+v", k)
	}
	dep := &Record{Revision: 4, Kind: KindDeployment, Deployment: &Deployment{ID: "d1", Models: []string{"m"}, MaxConcurrency: 2}}
	if wire, err = s.Seal(dep); err != nil {
		t.Fatal(err)
	}
	if out, err = v.Open(wire); err != nil {
		t.Fatal(err)
	}
	if d := out.Deployment; len(d.Models) != 1 || d.Models[0] != "m" || d.MaxConcurrency != 2 {
		t.Fatalf("deployment round trip: %+v", d)
	}
	// Without them, a record is as it was before the fields existed.
	if wire, err = s.Seal(&Record{Revision: 5, Kind: KindKey, Key: &Key{ID: "k2"}}); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(wire, []byte("models")) || bytes.Contains(wire, []byte("max_concurrency")) {
		t.Fatalf("unset fields are on the wire: %s", wire[64:])
	}
}
