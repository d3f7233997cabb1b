package origin

// The PostgreSQL half of the store tests. The server comes from
// KEYMESH_TEST_POSTGRES_URL (a superuser or CREATEDB role's URL) or, when
// that is unset, from a throwaway cluster started here on first use with
// the initdb/pg_ctl of the Debian "postgresql" package (scripts/pgtest.sh
// installs it), and stopped by TestMain. Every test gets its own database.
// Without PostgreSQL the tests skip, except when CI is set: there they fail.

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/keymesh/keymesh/event"
)

func TestMain(m *testing.M) {
	code := m.Run()
	stopTestPostgres()
	os.Exit(code)
}

var testPG struct {
	once    sync.Once
	admin   *sql.DB // connected to the server's "postgres" database
	baseURL *url.URL
	err     error
	stop    func()
}

// inCI reports whether env CI asks for no skipping.
func inCI() bool {
	v := strings.ToLower(strings.TrimSpace(os.Getenv("CI")))
	return v != "" && v != "0" && v != "false"
}

// postgresDSN returns the URL of a new, empty database on the test server,
// dropped when t ends. Without a server it skips t, or fails it in CI.
func postgresDSN(t testing.TB) string {
	t.Helper()
	testPG.once.Do(func() { testPG.err = startTestPostgres() })
	if testPG.err != nil {
		msg := "PostgreSQL store tests need a server: set KEYMESH_TEST_POSTGRES_URL or install the Debian postgresql package (run scripts/pgtest.sh as root): " + testPG.err.Error()
		if inCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	var b [6]byte
	rand.Read(b[:])
	name := "keymesh_test_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := testPG.admin.ExecContext(ctx, `CREATE DATABASE `+name); err != nil {
		t.Fatalf("creating test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := testPG.admin.ExecContext(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			t.Logf("dropping test database %s: %v", name, err)
		}
	})
	u := *testPG.baseURL
	u.Path = "/" + name
	return u.String()
}

func startTestPostgres() error {
	raw := os.Getenv("KEYMESH_TEST_POSTGRES_URL")
	if raw == "" {
		var err error
		if raw, err = startLocalPostgres(); err != nil {
			return err
		}
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return errors.New("KEYMESH_TEST_POSTGRES_URL is not a postgres:// URL")
	}
	db, err := sql.Open("pgx", raw)
	if err != nil {
		return err
	}
	// A server just started may take a moment to accept connections.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		perr := db.PingContext(ctx)
		if perr == nil {
			err = nil
			break
		}
		if ctx.Err() != nil {
			if err == nil {
				err = perr
			}
			break
		}
		err = perr
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		db.Close()
		return fmt.Errorf("connecting to the test server: %w", redactPGError(err))
	}
	testPG.admin, testPG.baseURL = db, u
	return nil
}

func stopTestPostgres() {
	if testPG.admin != nil {
		testPG.admin.Close()
	}
	if testPG.stop != nil {
		testPG.stop()
	}
}

// findPGBin returns the directory holding initdb and pg_ctl: from PATH, or
// the newest /usr/lib/postgresql/<version>/bin.
func findPGBin() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r
		}
		dir := filepath.Dir(p)
		if _, err := os.Stat(filepath.Join(dir, "pg_ctl")); err == nil {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("initdb not found in PATH nor under /usr/lib/postgresql/*/bin")
}

func pgVersion(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

// startLocalPostgres initialises and starts a cluster in a temp dir on a
// free port, as user postgres when running as root (initdb refuses root),
// and returns its superuser URL.
func startLocalPostgres() (string, error) {
	bin, err := findPGBin()
	if err != nil {
		return "", err
	}
	base := ""
	if os.Geteuid() == 0 && !othersCanEnter(os.TempDir()) {
		base = "/tmp" // the postgres user must reach the cluster's directory
	}
	dir, err := os.MkdirTemp(base, "keymesh-pgtest-")
	if err != nil {
		return "", err
	}
	asUser := func(name string, args ...string) *exec.Cmd {
		return exec.Command(filepath.Join(bin, name), args...)
	}
	if os.Geteuid() == 0 {
		pu, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return "", errors.New("running as root and there is no user \"postgres\" to run initdb as")
		}
		uid, _ := strconv.Atoi(pu.Uid)
		gid, _ := strconv.Atoi(pu.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return "", err
		}
		runuser, rerr := exec.LookPath("runuser")
		asUser = func(name string, args ...string) *exec.Cmd {
			if rerr == nil {
				return exec.Command(runuser, append([]string{"-u", "postgres", "--", filepath.Join(bin, name)}, args...)...)
			}
			quoted := []string{filepath.Join(bin, name)}
			for _, a := range args {
				quoted = append(quoted, "'"+strings.ReplaceAll(a, "'", `'\''`)+"'")
			}
			return exec.Command("su", "postgres", "-s", "/bin/sh", "-c", strings.Join(quoted, " "))
		}
	}
	data := filepath.Join(dir, "data")
	if out, err := asUser("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("initdb: %v: %s", err, lastLines(out))
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	// Durability is irrelevant for a throwaway test cluster.
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200", port, dir)
	if out, err := asUser("pg_ctl", "-D", data, "-l", filepath.Join(dir, "server.log"), "-w", "-t", "60", "-o", opts, "start").CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "server.log"))
		os.RemoveAll(dir)
		return "", fmt.Errorf("pg_ctl start: %v: %s %s", err, lastLines(out), lastLines(log))
	}
	testPG.stop = func() {
		asUser("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop").Run()
		os.RemoveAll(dir)
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port), nil
}

// othersCanEnter reports whether every directory from dir up to / can be
// traversed by other users.
func othersCanEnter(dir string) bool {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == filepath.Dir(d) {
			return true
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

func openTestPostgres(t *testing.T, seal func(*event.Record) ([]byte, error)) *Store {
	dsn := postgresDSN(t)
	st, err := openStore(dsn, "")
	if err != nil {
		t.Fatal(err)
	}
	st.seal = seal
	t.Cleanup(func() { st.Close() })
	return st
}

func TestStorePostgres(t *testing.T) { runStoreSuite(t, openTestPostgres) }

// Lookups and snapshots read the revision and the state in one snapshot:
// on PostgreSQL that takes REPEATABLE READ (READ COMMITTED would let a
// commit land between the two reads).
func TestPostgresReadsInOneSnapshot(t *testing.T) {
	st := openTestPostgres(t, nil)
	ctx := context.Background()
	tx, err := st.readTx(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	var iso, ro string
	if err := tx.QueryRowContext(ctx, `SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')`).Scan(&iso, &ro); err != nil {
		t.Fatal(err)
	}
	if iso != "repeatable read" || ro != "on" {
		t.Fatalf("read transaction is %s, read only %s", iso, ro)
	}
	before, err := st.revision(ctx, tx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.db.ExecContext(ctx, `UPDATE counters SET value = value + 1 WHERE name = 'revision'`); err != nil {
		t.Fatal(err)
	}
	if after, _ := st.revision(ctx, tx); after != before {
		t.Fatalf("revision moved from %d to %d inside one read transaction", before, after)
	}
}

// Several origins starting at once on an empty database all get the schema.
func TestPostgresConcurrentSchemaCreation(t *testing.T) {
	dsn := postgresDSN(t)
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			st, err := openStore(dsn, "")
			if err == nil {
				st.Close()
			}
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// A postgres store that cannot be reached fails New without echoing the
// URL (it may carry a password).
func TestPostgresUnreachableDoesNotLeakDSN(t *testing.T) {
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	dsn := fmt.Sprintf("postgres://keymesh:s3cr3t-pw@127.0.0.1:%d/km?sslmode=disable&connect_timeout=2", port)
	_, err = openStore(dsn, "")
	if err == nil {
		t.Fatal("opened an unreachable store")
	}
	if strings.Contains(err.Error(), "s3cr3t-pw") {
		t.Fatalf("error echoes the password: %v", err)
	}
}
