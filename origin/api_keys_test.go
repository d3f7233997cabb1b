package origin

import (
	"bytes"
	"net/http"
	"testing"

	"github.com/keymesh/keymesh/apikey"
)

func TestAPIKeyAuth(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects", map[string]string{"name": "other"}, nil)
	var admin, plain keyResp
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"permissions": []string{"write_config", "run_inference"}}, &admin)
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, &plain)

	kc := &client{t: t, base: c.base}
	st, _, _ := kc.doH("GET", "/v1/projects/default/keys", nil, map[string]string{"X-API-Key": *admin.Key})
	if st != 200 {
		t.Fatalf("X-API-Key with write_config: %d", st)
	}
	kc.token = *admin.Key
	if st, _ := kc.do("GET", "/v1/projects/default/keys", nil); st != 200 {
		t.Fatalf("Bearer key: %d", st)
	}
	if st, _ := kc.do("GET", "/v1/projects/other/keys", nil); st != 403 {
		t.Fatalf("other project: %d", st)
	}
	if st, _ := kc.do("POST", "/v1/projects/default/keys", map[string]any{"permissions": []string{"manage_users"}}); st != 403 {
		t.Fatalf("escalation: %d", st)
	}
	if st, _ := kc.do("POST", "/v1/projects", map[string]string{"name": "x"}); st != 403 {
		t.Fatalf("manage_users needed: %d", st)
	}
	kc.token = *plain.Key
	if st, _ := kc.do("GET", "/v1/projects/default/keys", nil); st != 403 {
		t.Fatalf("key without write_config: %d", st)
	}
	c.must(200, "PATCH", "/v1/projects/default/keys/"+admin.ID, map[string]any{"disabled": true}, nil)
	kc.token = *admin.Key
	if st, _ := kc.do("GET", "/v1/projects/default/keys", nil); st != 401 {
		t.Fatalf("disabled key: %d", st)
	}
}

// A project key holding write_config may manage only keys whose every
// permission it holds itself: rotating a greater key would hand it that
// key's secret, and changing, relinking or deleting one would let it tamper
// with a key it could not have created. Refusals take no revision.
func TestAPIKeyCannotManageMorePrivilegedKeys(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		s := startServer(t, cfg)
		c := newClient(t, s)
		c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
		var wc, big, small keyResp
		c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "wc", "permissions": []string{"write_config"}}, &wc)
		c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "big",
			"permissions": []string{"write_config", "run_inference", "manage_users"}}, &big)
		c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "small", "permissions": []string{}}, &small)
		kc := keyClient(t, s, *wc.Key)
		keys := "/v1/projects/default/keys/"
		rev := s.Revision()
		for _, tc := range []struct {
			what, method, path string
			body               any
		}{
			{"rotate", "POST", keys + big.ID + "/rotate", map[string]any{"grace_seconds": 60}},
			{"patch", "PATCH", keys + big.ID, map[string]any{"disabled": true}},
			{"patch permissions down", "PATCH", keys + big.ID, map[string]any{"permissions": []string{"write_config"}}},
			{"delete", "DELETE", keys + big.ID, nil},
			{"delete with wait", "DELETE", keys + big.ID + "?wait=1s", nil},
			{"link", "PUT", "/v1/projects/default/deployments/chat/keys/" + big.ID, nil},
			{"unlink", "DELETE", "/v1/projects/default/deployments/chat/keys/" + big.ID, nil},
			{"create with the defaults", "POST", "/v1/projects/default/keys", map[string]any{"name": "d"}},
			{"create with null permissions", "POST", "/v1/projects/default/keys", map[string]any{"permissions": nil}},
			{"create project", "POST", "/v1/projects", map[string]any{"name": "mine"}},
		} {
			st, b := kc.do(tc.method, tc.path, tc.body)
			wantError(t, tc.what, st, b, http.StatusForbidden, "PERMISSION_DENIED")
			if bytes.Contains(b, []byte(`"key"`)) || bytes.Contains(b, []byte(apikey.Prefix)) {
				t.Fatalf("%s: refusal carries a secret: %s", tc.what, b)
			}
		}
		if s.Revision() != rev {
			t.Fatalf("refused requests moved the revision from %d to %d", rev, s.Revision())
		}
		// The greater key is untouched: its secret still works, it is enabled.
		var got keyResp
		keyClient(t, s, *big.Key).must(200, "GET", keys+big.ID, nil, &got)
		if got.Disabled || len(got.Permissions) != 3 || got.Prefix != big.Prefix {
			t.Fatalf("greater key changed: %+v", got)
		}
		// Not even a key holding manage_users creates projects.
		st, b := keyClient(t, s, *big.Key).do("POST", "/v1/projects", map[string]any{"name": "mine"})
		wantError(t, "manage_users key creating a project", st, b, http.StatusForbidden, "PERMISSION_DENIED")

		// Keys within its own permissions, itself included, it manages.
		kc.must(201, "POST", "/v1/projects/default/keys", map[string]any{"permissions": []string{"write_config"}}, nil)
		kc.must(200, "PATCH", keys+small.ID, map[string]any{"name": "smaller"}, nil)
		kc.must(200, "PUT", "/v1/projects/default/deployments/chat/keys/"+small.ID, nil, nil)
		var rot keyResp
		kc.must(200, "POST", keys+small.ID+"/rotate", nil, &rot)
		if rot.Key == nil {
			t.Fatal("rotate answered no secret")
		}
		kc.must(200, "POST", keys+wc.ID+"/rotate", map[string]any{"grace_seconds": 60}, nil)
		if st, _ := kc.do("DELETE", keys+small.ID, nil); st != http.StatusNoContent {
			t.Fatalf("delete of a lesser key: %d", st)
		}
		// A user manages every key.
		c.must(200, "POST", keys+big.ID+"/rotate", nil, nil)
	})
}
