package origin

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

// The statement cache is invisible: scripts of several statements still
// run whole, a query may run again while its own rows are open (nested),
// and past the cache's bound queries still work.
func TestSQLiteStatementCache(t *testing.T) {
	st, err := openSQLiteDB(filepath.Join(t.TempDir(), "cache.db"), "NORMAL")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if _, err := st.db.ExecContext(ctx, `CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);`); err != nil {
		t.Fatal(err)
	}
	conn, err := st.db.Conn(ctx) // one connection: the cache is per connection
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const q = `SELECT n FROM t ORDER BY n`
	outer, err := conn.QueryContext(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for outer.Next() {
		var n int
		if err := outer.Scan(&n); err != nil {
			t.Fatal(err)
		}
		// The same query again, its cached statement busy with outer's rows.
		var inner []int
		rows, err := conn.QueryContext(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var m int
			_ = rows.Scan(&m)
			inner = append(inner, m)
		}
		rows.Close()
		if fmt.Sprint(inner) != "[1 2]" {
			t.Fatalf("nested query read %v", inner)
		}
		got = append(got, n)
	}
	outer.Close()
	if fmt.Sprint(got) != "[1 2]" {
		t.Fatalf("outer query read %v", got)
	}
	// Repeated, and more distinct queries than the cache holds.
	for i := range maxCachedStmts + 10 {
		var n int
		if err := conn.QueryRowContext(ctx, fmt.Sprintf(`SELECT COUNT(*) + %d FROM t`, i)).Scan(&n); err != nil || n != 2+i {
			t.Fatalf("query %d: %d %v", i, n, err)
		}
		if _, err := conn.ExecContext(ctx, `UPDATE t SET n = n WHERE n = ?`, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := conn.Raw(func(dc any) error {
		if n := len(dc.(*cachingConn).stmts); n != maxCachedStmts {
			return fmt.Errorf("%d statements cached, want the bound %d", n, maxCachedStmts)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
