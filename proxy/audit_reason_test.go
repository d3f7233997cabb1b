package proxy

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/testutil"
)

// reasonState is a fakeState whose keys in errs are found but refused with
// their error, as a View refuses a disabled or expired key it holds.
type reasonState struct {
	*fakeState
	errs map[apikey.Hash]error
}

func (s *reasonState) Authorize(ctx context.Context, h apikey.Hash) (*cache.Key, error) {
	k, err := s.fakeState.Authorize(ctx, h)
	if e, ok := s.errs[h]; ok && err == nil {
		return k, e
	}
	return k, err
}

// Each refusal's audit record says why (docs/api.md, "Audit log") and,
// when the key is known, whose it was; a request let through has no
// reason; no record holds the secret.
func TestAuditRecordReasons(t *testing.T) {
	up := newUpstream(t, nil)
	mk := func(id string, mutate func(*event.Key), deps ...string) (string, apikey.Hash, *cache.Key) {
		secret, err := apikey.Generate()
		if err != nil {
			t.Fatal(err)
		}
		h, err := apikey.ParseString(secret)
		if err != nil {
			t.Fatal(err)
		}
		ek := &event.Key{ID: id, Project: "prj_1", Secrets: []event.Secret{{Hash: h}},
			Permissions: event.DefaultPermissions, Deployments: deps}
		if mutate != nil {
			mutate(ek)
		}
		return secret, h, cache.NewKey(ek, 1)
	}
	okSecret, okH, okKey := mk("key_ok", nil, "dep_1")
	unlinkedSecret, unlinkedH, unlinkedKey := mk("key_unlinked", nil, "dep_2")
	disabledSecret, disabledH, disabledKey := mk("key_disabled", nil, "dep_1")
	expiredSecret, expiredH, expiredKey := mk("key_expired", nil, "dep_1")
	permSecret, permH, permKey := mk("key_perm", func(k *event.Key) { k.Permissions = []string{event.PermReadModels} }, "dep_1")
	modelSecret, modelH, modelKey := mk("key_model", func(k *event.Key) { k.Models = []string{"small"} }, "dep_1")
	rateSecret, rateH, rateKey := mk("key_rate", func(k *event.Key) { k.RateLimit = &event.RateLimit{RequestsPerMinute: 1} }, "dep_1")
	unknownSecret, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	big := deployment("dep_big", up.URL, true)
	big.PathPrefix, big.MaxBodyBytes = "/big", 8
	st := &reasonState{fakeState: &fakeState{
		deps: cache.NewDeployments([]event.Deployment{deployment("dep_1", up.URL, true), big}, 1),
		keys: map[apikey.Hash]*cache.Key{okH: okKey, unlinkedH: unlinkedKey, disabledH: disabledKey,
			expiredH: expiredKey, permH: permKey, modelH: modelKey, rateH: rateKey}},
		errs: map[apikey.Hash]error{disabledH: cache.ErrDisabled, expiredH: cache.ErrExpired}}
	p := startProxy(t, st)
	c := client(t)
	body := `{"model":"large","messages":[]}`
	cases := []struct {
		name, path, secret, body string
		status                   int
		keyID, reason            string
	}{
		{"allowed", "/v1/chat/completions", okSecret, `{"messages":[]}`, 200, "key_ok", ""},
		{"no credential", "/v1/chat/completions", "", body, 401, "", "no_credential"},
		{"malformed", "/v1/chat/completions", "not-a-key", body, 401, "", "malformed"},
		{"unknown", "/v1/chat/completions", unknownSecret, body, 401, "", "unknown"},
		{"unlinked", "/v1/chat/completions", unlinkedSecret, body, 401, "key_unlinked", "unlinked"},
		{"disabled", "/v1/chat/completions", disabledSecret, body, 401, "key_disabled", "disabled"},
		{"expired", "/v1/chat/completions", expiredSecret, body, 401, "key_expired", "expired"},
		{"permission", "/v1/chat/completions", permSecret, body, 403, "key_perm", "permission"},
		{"model", "/v1/chat/completions", modelSecret, body, 403, "key_model", "model_not_allowed"},
		{"rate 1", "/v1/chat/completions", rateSecret, `{"messages":[]}`, 200, "key_rate", ""},
		{"rate 2", "/v1/chat/completions", rateSecret, `{"messages":[]}`, 429, "key_rate", "rate_limited"},
		{"too large", "/big/v1/chat/completions", okSecret, body, 413, "", "too_large"},
	}
	for i, tc := range cases {
		h := map[string]string{"Content-Type": "application/json", "X-Request-Id": fmt.Sprintf("case-%d", i)}
		if tc.secret != "" {
			h["Authorization"] = "Bearer " + tc.secret
		}
		resp, got := do(t, c, "POST", p.url+tc.path, tc.body, h)
		if resp.StatusCode != tc.status {
			t.Fatalf("%s: status %d, want %d (%s)", tc.name, resp.StatusCode, tc.status, got)
		}
	}
	var recs []auditWire
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if recs = p.audit.records(t); len(recs) < len(cases) {
			return fmt.Errorf("%d audit records, want %d", len(recs), len(cases))
		}
		return nil
	})
	byID := map[string]auditWire{}
	for _, r := range recs {
		byID[r.RequestID] = r
	}
	for i, tc := range cases {
		r, ok := byID[fmt.Sprintf("case-%d", i)]
		if !ok {
			t.Fatalf("%s: no audit record", tc.name)
		}
		if r.KeyID != tc.keyID || r.Reason != tc.reason || r.Status != tc.status {
			t.Errorf("%s: record key_id %q reason %q status %d, want %q %q %d", tc.name, r.KeyID, r.Reason, r.Status, tc.keyID, tc.reason, tc.status)
		}
	}
	p.audit.mu.Lock()
	defer p.audit.mu.Unlock()
	for _, raw := range p.audit.recs {
		for _, s := range []string{okSecret, unlinkedSecret, disabledSecret, expiredSecret, permSecret, modelSecret, rateSecret, unknownSecret} {
			if strings.Contains(string(raw), s) || strings.Contains(string(raw), s[:16]) {
				t.Fatalf("record %s holds a secret", raw)
			}
		}
	}
}

// The edge writes exactly the reasons the origin accepts (event.AuditReasons):
// a reason added on one side only would be written but unsearchable, or
// searchable but never written.
func TestAuditReasonsMatchTheContract(t *testing.T) {
	var written []string
	for _, r := range auditReasons {
		if r != "" && !slices.Contains(written, r) {
			written = append(written, r)
		}
	}
	slices.Sort(written)
	want := slices.Clone(event.AuditReasons)
	slices.Sort(want)
	if !slices.Equal(written, want) {
		t.Fatalf("the edge's audit reasons %v, the contract's %v", written, want)
	}
}
