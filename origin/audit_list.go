package origin

// GET /v1/audit: stored records by project, key, deployment, source,
// status, reason and time, newest first, in pages.

import (
	"encoding/base64"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

// listAudit serves GET /v1/audit?project=&key_id=&deployment=&source=
// &status=&reason=&since=&until=&limit=&cursor=: matching records, newest
// first, one page of them.
func (s *Server) listAudit(c *call) error {
	q := c.r.URL.Query()
	where := []string{"1 = 1"}
	var args []any
	project := q.Get("project")
	if project != "" {
		id := project
		if p, err := s.store.project(c.ctx(), project); err == nil {
			id = p.ID
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		project = id
	}
	if c.who.ProjectID != "" {
		if project != "" && project != c.who.ProjectID {
			return apierror.New(http.StatusForbidden, apierror.PermissionDenied, "this key may only read its own project's audit records")
		}
		project = c.who.ProjectID
	}
	if project != "" {
		where, args = append(where, "project = ?"), append(args, project)
	}
	if v := q.Get("key_id"); v != "" {
		where, args = append(where, "key_id = ?"), append(args, v)
	}
	if v := q.Get("deployment"); v != "" {
		where, args = append(where, "(deployment = ? OR deployment_name = ?)"), append(args, v, v)
	}
	if v := q.Get("source"); v != "" {
		if v != auditSourceEdge && v != auditSourceAdmin {
			return validation("source", "must be edge or admin")
		}
		where, args = append(where, "source = ?"), append(args, v)
	}
	if v := q.Get("status"); v != "" {
		lo, hi, err := parseStatus(v)
		if err != nil {
			return err
		}
		where, args = append(where, "status >= ? AND status <= ?"), append(args, lo, hi)
	}
	if v := q.Get("reason"); v != "" {
		if !slices.Contains(event.AuditReasons, v) {
			return validation("reason", "must be a refusal reason: "+strings.Join(event.AuditReasons, ", "))
		}
		where, args = append(where, "reason = ?"), append(args, v)
	}
	now := time.Now()
	if v := q.Get("since"); v != "" {
		t, err := parseSince(v, now)
		if err != nil {
			return err
		}
		where, args = append(where, "ts >= ?"), append(args, t.UnixMicro())
	}
	if v := q.Get("until"); v != "" {
		t, err := parseSince(v, now)
		if err != nil {
			return validation("until", "must be an RFC 3339 time, a YYYY-MM-DD date or a duration such as 1h")
		}
		where, args = append(where, "ts < ?"), append(args, t.UnixMicro())
	}
	if v := q.Get("cursor"); v != "" {
		ts, id, ok := decodeAuditCursor(v)
		if !ok {
			return validation("cursor", "is not a cursor returned by this API")
		}
		where, args = append(where, "(ts < ? OR (ts = ? AND id < ?))"), append(args, ts, ts, id)
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return validation("limit", "must be a number between 1 and 1000")
		}
		limit = n
	}
	args = append(args, limit+1) // one more: is there a next page?
	rows, err := s.auditStore.db.QueryContext(c.ctx(), s.auditStore.q(`SELECT id, ts, source, edge, site, client_ip, actor, key_id,
		project, deployment, deployment_name, method, path, action, target, status, duration_us, request_id, reason, changed
		FROM audit_log WHERE `+strings.Join(where, " AND ")+` ORDER BY ts DESC, id DESC LIMIT ?`), args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	out := []api.AuditRecord{}
	var next *string
	for rows.Next() {
		var r AuditRecord
		var ts, dur int64
		var changed string
		if err := rows.Scan(&r.ID, &ts, &r.Source, &r.Edge, &r.Site, &r.ClientIP, &r.Actor, &r.KeyID, &r.Project,
			&r.Deployment, &r.DeploymentName, &r.Method, &r.Path, &r.Action, &r.Target, &r.Status, &dur, &r.RequestID,
			&r.Reason, &changed); err != nil {
			return err
		}
		if len(out) == limit {
			last := out[len(out)-1]
			cur := encodeAuditCursor(last.Time.UnixMicro(), last.ID)
			next = &cur
			break
		}
		r.Time = time.UnixMicro(ts).UTC()
		r.DurationMS = float64(dur) / 1000
		if changed != "" {
			r.Changed = strings.Split(changed, ",")
		}
		out = append(out, auditAnswer(&r))
	}
	if err := rows.Err(); err != nil {
		return err
	}
	writeJSON(c.w, http.StatusOK, api.AuditPage{Items: out, NextCursor: next})
	return nil
}

// An audit cursor is the (time, id) of a page's last record: the next page
// is what sorts after it, newest first, whatever is stored meanwhile.
func encodeAuditCursor(ts int64, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(ts, 10) + ":" + id))
}

func decodeAuditCursor(v string) (int64, string, bool) {
	if len(v) > maxCursorLen {
		return 0, "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil {
		return 0, "", false
	}
	tsText, id, ok := strings.Cut(string(b), ":")
	if !ok || id == "" {
		return 0, "", false
	}
	ts, err := strconv.ParseInt(tsText, 10, 64)
	return ts, id, err == nil
}

// parseStatus reads status= as one status code (404) or a class (4xx):
// the inclusive range it matches.
func parseStatus(v string) (lo, hi int, err error) {
	if len(v) == 3 && v[0] >= '1' && v[0] <= '5' && strings.EqualFold(v[1:], "xx") {
		lo = int(v[0]-'0') * 100
		return lo, lo + 99, nil
	}
	n, e := strconv.Atoi(v)
	if e != nil || n < 100 || n > 599 {
		return 0, 0, validation("status", "must be a status code such as 401 or a class such as 4xx")
	}
	return n, n, nil
}

// auditAnswer is r as GET /v1/audit shows it.
func auditAnswer(r *AuditRecord) api.AuditRecord {
	return api.AuditRecord{ID: r.ID, Time: r.Time, Source: r.Source, Edge: r.Edge, Site: r.Site, ClientIP: r.ClientIP,
		Actor: r.Actor, KeyID: r.KeyID, Project: r.Project, Deployment: r.Deployment, DeploymentName: r.DeploymentName,
		Method: r.Method, Path: r.Path, Action: r.Action, Target: r.Target, Status: r.Status, DurationMS: r.DurationMS,
		RequestID: r.RequestID, Reason: r.Reason, Changed: r.Changed}
}

// parseSince reads since= as an RFC 3339 time, a YYYY-MM-DD date (00:00
// UTC) or a duration back from now (e.g. 1h).
func parseSince(v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, v); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, validation("since", "must be an RFC 3339 time, a YYYY-MM-DD date or a duration such as 1h")
}
