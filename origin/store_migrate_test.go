package origin

import (
	"context"
	"database/sql"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/event"
)

// A store written before migrations (schema version 1, no claims, counts
// or token versions) is migrated on open: counts and claims are filled in
// from what it holds, overlapping deployments of two projects are kept and
// reported, and a change that would still overlap is refused.
func TestMigratingAVersion1Store(t *testing.T) {
	for _, tc := range []struct {
		name string
		dsn  func(t *testing.T) (dsn, driver, raw string, stmts []string)
	}{
		{"sqlite", func(t *testing.T) (string, string, string, []string) {
			path := filepath.Join(t.TempDir(), "old.db")
			return "sqlite://" + path, "sqlite", "file:" + path, []string{sqliteSchema}
		}},
		{"postgres", func(t *testing.T) (string, string, string, []string) {
			dsn := postgresDSN(t)
			return dsn, "pgx", dsn, postgresSchema
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dsn, driver, raw, stmts := tc.dsn(t)
			old, err := sql.Open(driver, raw)
			if err != nil {
				t.Fatal(err)
			}
			now := ts(time.Now())
			for _, st := range append(stmts,
				`INSERT INTO users (id, username, password_hash, created_at) VALUES ('usr_1', 'admin', 'x', '`+now+`')`,
				`INSERT INTO projects (id, name, created_at) VALUES ('prj_a', 'a', '`+now+`'), ('prj_b', 'b', '`+now+`')`,
				`INSERT INTO keys (id, project_id, name, description, prefix, permissions, disabled, created_at, updated_at, revision)
					VALUES ('key_1', 'prj_a', '', '', 'km_x', '[]', 0, '`+now+`', '`+now+`', 1),
					       ('key_2', 'prj_a', '', '', 'km_y', '[]', 0, '`+now+`', '`+now+`', 2)`,
				// Two projects on one host: what the old origin let happen.
				`INSERT INTO deployments (id, project_id, name, hosts, path_prefix, upstreams, auth_enabled, invalid_key_status,
					max_body_bytes, max_prompt_chars, created_at, updated_at, revision)
					VALUES ('dep_a', 'prj_a', 'a', '["chat.example"]', '/', '{"*":["http://127.0.0.1:1"]}', 1, 401, 1, 1, '`+now+`', '`+now+`', 3),
					       ('dep_b', 'prj_b', 'b', '["chat.example"]', '/v1', '{"*":["http://127.0.0.1:1"]}', 0, 401, 1, 1, '`+now+`', '`+now+`', 4)`,
				`UPDATE counters SET value = 4 WHERE name = 'revision'`,
			) {
				if _, err := old.ExecContext(ctx, st); err != nil {
					t.Fatalf("%s: %v", st, err)
				}
			}
			old.Close()

			st, err := openStore(dsn, "")
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			priv, _ := event.GenerateKey()
			signer, _ := event.NewSigner(priv)
			st.seal = signer.Seal
			if len(st.notes) != 1 || !strings.Contains(st.notes[0], "1 deployment(s) overlap") {
				t.Fatalf("notes %q", st.notes)
			}
			var v string
			if err := st.db.QueryRowContext(ctx, `SELECT value FROM metadata WHERE name = 'schema_version'`).Scan(&v); err != nil || v != strconv.Itoa(schemaVersion) {
				t.Fatalf("schema_version %q %v", v, err)
			}
			r, err := st.rules(ctx, "prj_a")
			if err != nil || r.Keys != 2 || r.Deployments != 1 || r.AllowedUpstreams != nil || r.Limits != DefaultLimits {
				t.Fatalf("rules %+v %v", r, err)
			}
			// Keys and deployments from before model lists allow any model, uncapped.
			if k, err := st.getKey(ctx, "prj_a", "key_1"); err != nil || k.Models != nil || k.MaxConcurrency != 0 {
				t.Fatalf("old key %+v %v", k, err)
			}
			if d, err := st.getDeployment(ctx, "prj_a", "dep_a"); err != nil || d.Models != nil || d.MaxConcurrency != 0 {
				t.Fatalf("old deployment %+v %v", d, err)
			}
			// And from before token limits, bound no tokens (version 6).
			if k, err := st.getKey(ctx, "prj_a", "key_1"); err != nil || k.Tokens != nil {
				t.Fatalf("old key's tokens %+v %v", k.Tokens, err)
			}
			if d, err := st.getDeployment(ctx, "prj_a", "dep_a"); err != nil || d.Tokens != nil || d.ProjectTokens != nil || d.DefaultMaxTokens != 0 {
				t.Fatalf("old deployment's tokens %+v %+v %d %v", d.Tokens, d.ProjectTokens, d.DefaultMaxTokens, err)
			}
			if r, err := st.rules(ctx, "prj_a"); err != nil || r.Tokens != nil {
				t.Fatalf("old project's tokens %+v %v", r, err)
			}
			u, err := st.userByID(ctx, "usr_1")
			if err != nil || u.TokenVersion != 0 || u.Username != "admin" {
				t.Fatalf("user %+v %v", u, err)
			}
			// The overlap stays refused for changes: b cannot keep it.
			_, err = st.updateDeployment(ctx, "prj_b", "dep_b", func(d *event.Deployment) error { d.AuthEnabled = true; return nil })
			if !strings.Contains(errString(err), "overlaps a deployment of another project") {
				t.Fatalf("update of an overlapping deployment: %v", err)
			}
			// Moving off the host is a change that is allowed.
			if _, err := st.updateDeployment(ctx, "prj_b", "dep_b", func(d *event.Deployment) error { d.Hosts = []string{"b.example"}; return nil }); err != nil {
				t.Fatal(err)
			}
			st.Close()
			// Opening again migrates nothing.
			st2, err := openStore(dsn, "")
			if err != nil {
				t.Fatal(err)
			}
			defer st2.Close()
			if len(st2.notes) != 0 {
				t.Fatalf("second open noted %q", st2.notes)
			}
			// A store newer than this origin is refused.
			if _, err := st2.db.ExecContext(ctx, `UPDATE metadata SET value = '99' WHERE name = 'schema_version'`); err != nil {
				t.Fatal(err)
			}
			if _, err := openStore(dsn, ""); err == nil || !strings.Contains(err.Error(), "newer than this origin") {
				t.Fatalf("newer store opened: %v", err)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
