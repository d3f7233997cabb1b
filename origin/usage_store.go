package origin

// The usage ledger's tables: usage_seen holds the id of every record stored
// (its primary key is what makes a record count once), usage_hourly and
// usage_daily the sums per project × key × deployment × model and UTC hour
// or day. A batch of records is one transaction: the ids first (INSERT ...
// ON CONFLICT DO NOTHING RETURNING id names the ones not seen before), then
// the sums of those alone; the consumer acknowledges the batch only after
// the commit (usage.go). SQL is the subset SQLite and PostgreSQL share.

import (
	"cmp"
	"context"
	"database/sql"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/keymesh/keymesh/event"
)

// usageSchema is migration 4's DDL; coll is the collation of text columns
// (PostgreSQL: "C", as every text column of the store).
func usageSchema(coll string) []string {
	t := "TEXT" + coll
	sums := `requests BIGINT NOT NULL, prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
		cached_tokens BIGINT NOT NULL, estimated_requests BIGINT NOT NULL`
	agg := func(table, bucket string) string {
		return `CREATE TABLE ` + table + ` (
		project_id ` + t + ` NOT NULL, ` + bucket + ` BIGINT NOT NULL, key_id ` + t + ` NOT NULL,
		deployment_id ` + t + ` NOT NULL, model ` + t + ` NOT NULL, ` + sums + `,
		PRIMARY KEY (project_id, ` + bucket + `, key_id, deployment_id, model))`
	}
	return []string{
		`CREATE TABLE usage_seen (id ` + t + ` PRIMARY KEY, ts BIGINT NOT NULL)`,
		`CREATE INDEX usage_seen_ts ON usage_seen (ts)`,
		agg("usage_hourly", "hour"),
		`CREATE INDEX usage_hourly_key ON usage_hourly (key_id, hour)`,
		agg("usage_daily", "day"),
		`CREATE INDEX usage_daily_key ON usage_daily (key_id, day)`,
	}
}

// usageCounts are the sums of one aggregate row. Cost is in nano-units
// of the deployment's pricing currency (event.Pricing), priced when the
// record was stored (migration 8: rows before it cost 0).
type usageCounts struct {
	Requests, PromptTokens, CompletionTokens, CachedTokens, EstimatedRequests int64
	Cost                                                                      int64
}

func (c *usageCounts) add(o usageCounts) {
	c.Requests += o.Requests
	c.PromptTokens += o.PromptTokens
	c.CompletionTokens += o.CompletionTokens
	c.CachedTokens += o.CachedTokens
	c.EstimatedRequests += o.EstimatedRequests
	c.Cost = saturatingAdd(c.Cost, o.Cost)
}

// saturatingAdd is a + b of two non-negative amounts, at most MaxInt64.
func saturatingAdd(a, b int64) int64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxInt64
}

// usageRecord is one checked record (checkUsage) as the ledger stores it.
type usageRecord struct {
	ID, Project, KeyID, Deployment, Model string
	Time                                  time.Time
	Counts                                usageCounts
}

// usageBucket names one aggregate row: bucket is the unix second its UTC
// hour or day starts at.
type usageBucket struct {
	Project, KeyID, Deployment, Model string
	Bucket                            int64
}

func compareBuckets(a, b usageBucket) int {
	return cmp.Or(cmp.Compare(a.Project, b.Project), cmp.Compare(a.Bucket, b.Bucket), cmp.Compare(a.KeyID, b.KeyID),
		cmp.Compare(a.Deployment, b.Deployment), cmp.Compare(a.Model, b.Model))
}

const (
	secondsPerHour = 3600
	secondsPerDay  = 86400
)

// usageStmtRows bounds the rows of one INSERT statement.
const usageStmtRows = 200

// storeUsage stores recs in one transaction. Records whose project is not
// the one their key or deployment belongs to (when those still exist) are
// returned as wrongProject and not stored; of the others, those whose id
// the store has seen are returned as duplicates; the rest are counted into
// the aggregates. recs must not repeat an id.
func (s *Store) storeUsage(ctx context.Context, recs []usageRecord) (stored, duplicates, wrongProject int, err error) {
	unlock := s.lockWrites()
	defer unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, 0, err
	}
	defer tx.Rollback()
	recs, wrongProject, err = s.sameProject(ctx, tx, recs)
	if err != nil {
		return 0, 0, 0, err
	}
	if err := s.priceUsage(ctx, tx, recs); err != nil {
		return 0, 0, 0, err
	}
	// Sorted, so that replicas inserting overlapping batches on PostgreSQL
	// lock the same rows in the same order and cannot deadlock.
	slices.SortFunc(recs, func(a, b usageRecord) int { return cmp.Compare(a.ID, b.ID) })
	fresh := map[string]bool{}
	for chunk := range slices.Chunk(recs, usageStmtRows) {
		args := make([]any, 0, 2*len(chunk))
		for i := range chunk {
			args = append(args, chunk[i].ID, chunk[i].Time.Unix())
		}
		values := strings.TrimSuffix(strings.Repeat("(?, ?),", len(chunk)), ",")
		rows, err := tx.QueryContext(ctx, s.q(`INSERT INTO usage_seen (id, ts) VALUES `+values+` ON CONFLICT (id) DO NOTHING RETURNING id`), args...)
		if err != nil {
			return 0, 0, 0, err
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return 0, 0, 0, err
			}
			fresh[id] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return 0, 0, 0, err
		}
	}
	hours, days := map[usageBucket]usageCounts{}, map[usageBucket]usageCounts{}
	for i := range recs {
		r := &recs[i]
		if !fresh[r.ID] {
			duplicates++
			continue
		}
		stored++
		sec := r.Time.Unix()
		b := usageBucket{Project: r.Project, KeyID: r.KeyID, Deployment: r.Deployment, Model: r.Model, Bucket: sec - sec%secondsPerHour}
		c := hours[b]
		c.add(r.Counts)
		hours[b] = c
		b.Bucket = sec - sec%secondsPerDay
		c = days[b]
		c.add(r.Counts)
		days[b] = c
	}
	for table, sums := range map[string]map[usageBucket]usageCounts{"usage_hourly": hours, "usage_daily": days} {
		if err := s.addUsage(ctx, tx, table, sums); err != nil {
			return 0, 0, 0, err
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, 0, 0, err
	}
	return stored, duplicates, wrongProject, nil
}

// addUsage adds sums into table's rows, in the rows' order.
func (s *Store) addUsage(ctx context.Context, tx *sql.Tx, table string, sums map[usageBucket]usageCounts) error {
	bucket := map[string]string{"usage_hourly": "hour", "usage_daily": "day"}[table]
	buckets := make([]usageBucket, 0, len(sums))
	for b := range sums {
		buckets = append(buckets, b)
	}
	slices.SortFunc(buckets, compareBuckets)
	for chunk := range slices.Chunk(buckets, usageStmtRows) {
		args := make([]any, 0, 11*len(chunk))
		for _, b := range chunk {
			c := sums[b]
			args = append(args, b.Project, b.Bucket, b.KeyID, b.Deployment, b.Model,
				c.Requests, c.PromptTokens, c.CompletionTokens, c.CachedTokens, c.EstimatedRequests, c.Cost)
		}
		values := strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?),", len(chunk)), ",")
		q := `INSERT INTO ` + table + ` (project_id, ` + bucket + `, key_id, deployment_id, model,
			requests, prompt_tokens, completion_tokens, cached_tokens, estimated_requests, cost) VALUES ` + values + `
			ON CONFLICT (project_id, ` + bucket + `, key_id, deployment_id, model) DO UPDATE SET
			requests = ` + table + `.requests + excluded.requests,
			prompt_tokens = ` + table + `.prompt_tokens + excluded.prompt_tokens,
			completion_tokens = ` + table + `.completion_tokens + excluded.completion_tokens,
			cached_tokens = ` + table + `.cached_tokens + excluded.cached_tokens,
			estimated_requests = ` + table + `.estimated_requests + excluded.estimated_requests,
			cost = ` + table + `.cost + excluded.cost`
		if _, err := tx.ExecContext(ctx, s.q(q), args...); err != nil {
			return err
		}
	}
	return nil
}

// sameProject drops the records naming a key or deployment that exists in
// another project than the record's: an edge's mistake (or lie) must not
// move one tenant's usage into another's. A key or deployment deleted
// since is taken as the record says (records may arrive late).
func (s *Store) sameProject(ctx context.Context, tx *sql.Tx, recs []usageRecord) ([]usageRecord, int, error) {
	owner := map[string]map[string]string{"keys": {}, "deployments": {}}
	want := map[string][]any{}
	for i := range recs {
		if recs[i].KeyID != "" {
			want["keys"] = append(want["keys"], recs[i].KeyID)
		}
		want["deployments"] = append(want["deployments"], recs[i].Deployment)
	}
	for table, ids := range want {
		slices.SortFunc(ids, func(a, b any) int { return cmp.Compare(a.(string), b.(string)) })
		ids = slices.Compact(ids)
		for chunk := range slices.Chunk(ids, usageStmtRows) {
			rows, err := tx.QueryContext(ctx, s.q(`SELECT id, project_id FROM `+table+` WHERE id IN (`+
				strings.TrimSuffix(strings.Repeat("?,", len(chunk)), ",")+`)`), chunk...)
			if err != nil {
				return nil, 0, err
			}
			for rows.Next() {
				var id, project string
				if err := rows.Scan(&id, &project); err != nil {
					rows.Close()
					return nil, 0, err
				}
				owner[table][id] = project
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return nil, 0, err
			}
		}
	}
	out := recs[:0]
	wrong := 0
	for _, r := range recs {
		if p, ok := owner["deployments"][r.Deployment]; ok && p != r.Project {
			wrong++
			continue
		}
		if p, ok := owner["keys"][r.KeyID]; ok && r.KeyID != "" && p != r.Project {
			wrong++
			continue
		}
		out = append(out, r)
	}
	return out, wrong, nil
}

// pruneUsageSeen deletes the ids of records older than cutoff, in chunks
// (each its own statement and, on SQLite, its own hold of the writer
// lock). A copy of such a record arriving later is refused by its age
// (checkUsage), so it is never counted twice.
func (s *Store) pruneUsageSeen(ctx context.Context, cutoff time.Time) (int64, error) {
	var total int64
	for {
		n, err := func() (int64, error) {
			unlock := s.lockWrites()
			defer unlock()
			res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM usage_seen WHERE id IN (SELECT id FROM usage_seen WHERE ts < ? ORDER BY ts LIMIT ?)`),
				cutoff.Unix(), auditPruneRows)
			if err != nil {
				return 0, err
			}
			return res.RowsAffected()
		}()
		total += n
		if err != nil || n < auditPruneRows {
			return total, err
		}
	}
}

// usageFilter selects aggregate rows: project "" is every project; the
// others "" match anything. Since and until are whole hours (or, for the
// daily table, whole days): rows with since <= bucket < until.
type usageFilter struct {
	Project, KeyID, Deployment, Model string
	KeySet                            bool // KeyID was given ("" then means auth-off rows)
	Since, Until                      time.Time
}

// usageGroup are the columns a query groups by, in the order its rows are
// sorted: time first, then project, key, deployment, model.
type usageGroup struct {
	Project, Key, Deployment, Model, Hour, Day bool
}

// usageRow is one answer row; the members its group does not name are
// zero.
type usageRow struct {
	Project, KeyID, Deployment, Model string
	Bucket                            int64
	Counts                            usageCounts
}

// sumCols are the sums of a usage query (cast: PostgreSQL sums BIGINT as
// NUMERIC).
const sumCols = `CAST(SUM(requests) AS BIGINT), CAST(SUM(prompt_tokens) AS BIGINT), CAST(SUM(completion_tokens) AS BIGINT),
	CAST(SUM(cached_tokens) AS BIGINT), CAST(SUM(estimated_requests) AS BIGINT), CAST(SUM(cost) AS BIGINT)`

// queryUsage sums the aggregate rows matching f, grouped by g, at most
// limit rows (ordered by the grouped columns). It reads the daily table
// when the grouping needs no hours and f's bounds are whole days.
func (s *Store) queryUsage(ctx context.Context, f usageFilter, g usageGroup, limit int) ([]usageRow, error) {
	table, bucket := "usage_hourly", "hour"
	if !g.Hour && f.Since.Unix()%secondsPerDay == 0 && f.Until.Unix()%secondsPerDay == 0 {
		table, bucket = "usage_daily", "day"
	}
	where := []string{bucket + " >= ?", bucket + " < ?"}
	args := []any{f.Since.Unix(), f.Until.Unix()}
	for col, v := range map[string]string{"project_id": f.Project, "deployment_id": f.Deployment, "model": f.Model} {
		if v != "" {
			where, args = append(where, col+" = ?"), append(args, v)
		}
	}
	if f.KeySet {
		where, args = append(where, "key_id = ?"), append(args, f.KeyID)
	}
	var cols []string
	timeCol := "0"
	switch {
	case g.Hour:
		timeCol = bucket
	case g.Day:
		timeCol = bucket + " - " + bucket + " % 86400" // an hour's day, or the day itself
	}
	if timeCol != "0" {
		cols = append(cols, timeCol)
	}
	sel := []string{timeCol, "''", "''", "''", "''"}
	for i, on := range []bool{g.Project, g.Key, g.Deployment, g.Model} {
		if on {
			col := []string{"project_id", "key_id", "deployment_id", "model"}[i]
			cols = append(cols, col)
			sel[i+1] = col
		}
	}
	q := `SELECT ` + strings.Join(sel, ", ") + `, ` + sumCols + `
		FROM ` + table + ` WHERE ` + strings.Join(where, " AND ")
	if len(cols) > 0 {
		q += ` GROUP BY ` + strings.Join(cols, ", ") + ` ORDER BY ` + strings.Join(cols, ", ")
	}
	q += ` LIMIT ?`
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, s.q(q), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []usageRow
	for rows.Next() {
		var r usageRow
		var sums [6]sql.NullInt64
		if err := rows.Scan(&r.Bucket, &r.Project, &r.KeyID, &r.Deployment, &r.Model, &sums[0], &sums[1], &sums[2], &sums[3], &sums[4], &sums[5]); err != nil {
			return nil, err
		}
		if !sums[0].Valid { // no row matched: SUM over nothing
			continue
		}
		r.Counts = usageCounts{sums[0].Int64, sums[1].Int64, sums[2].Int64, sums[3].Int64, sums[4].Int64, sums[5].Int64}
		out = append(out, r)
	}
	return out, rows.Err()
}

// priceUsage sets each record's cost at its deployment's pricing as the
// store holds it now, in tx: the price a record is charged is the one in
// force when the origin counted it (a deployment deleted since, or never
// priced, costs 0).
func (s *Store) priceUsage(ctx context.Context, tx *sql.Tx, recs []usageRecord) error {
	ids := make([]any, 0, len(recs))
	for i := range recs {
		ids = append(ids, recs[i].Deployment)
	}
	slices.SortFunc(ids, func(a, b any) int { return cmp.Compare(a.(string), b.(string)) })
	ids = slices.Compact(ids)
	prices := map[string]*event.Pricing{}
	for chunk := range slices.Chunk(ids, usageStmtRows) {
		rows, err := tx.QueryContext(ctx, s.q(`SELECT id, pricing FROM deployments WHERE pricing IS NOT NULL AND id IN (`+
			strings.TrimSuffix(strings.Repeat("?,", len(chunk)), ",")+`)`), chunk...)
		if err != nil {
			return err
		}
		for rows.Next() {
			var id string
			var col sql.NullString
			if err := rows.Scan(&id, &col); err != nil {
				rows.Close()
				return err
			}
			p, err := scanPricing(col)
			if err != nil {
				rows.Close()
				return err
			}
			prices[id] = p
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	for i := range recs {
		c := &recs[i].Counts
		c.Cost = prices[recs[i].Deployment].Cost(c.PromptTokens, c.CompletionTokens, c.CachedTokens)
	}
	return nil
}
