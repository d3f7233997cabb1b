package origin

// GET /v1/audit: stored records by project, key, deployment, source and
// time, newest first.

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/internal/apierror"
)

// listAudit serves GET /v1/audit?project=&key_id=&deployment=&since=&limit=
// (and source=edge|admin): matching records, newest first.
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
	if v := q.Get("since"); v != "" {
		t, err := parseSince(v, time.Now())
		if err != nil {
			return err
		}
		where, args = append(where, "ts >= ?"), append(args, t.UnixMicro())
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return validation("limit", "must be a number between 1 and 1000")
		}
		limit = n
	}
	args = append(args, limit)
	rows, err := s.auditStore.db.QueryContext(c.ctx(), s.auditStore.q(`SELECT id, ts, source, edge, site, client_ip, actor, key_id,
		project, deployment, deployment_name, method, path, action, target, status, duration_us, request_id
		FROM audit_log WHERE `+strings.Join(where, " AND ")+` ORDER BY ts DESC, id DESC LIMIT ?`), args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	out := []api.AuditRecord{}
	for rows.Next() {
		var r AuditRecord
		var ts, dur int64
		if err := rows.Scan(&r.ID, &ts, &r.Source, &r.Edge, &r.Site, &r.ClientIP, &r.Actor, &r.KeyID, &r.Project,
			&r.Deployment, &r.DeploymentName, &r.Method, &r.Path, &r.Action, &r.Target, &r.Status, &dur, &r.RequestID); err != nil {
			return err
		}
		r.Time = time.UnixMicro(ts).UTC()
		r.DurationMS = float64(dur) / 1000
		out = append(out, auditAnswer(&r))
	}
	if err := rows.Err(); err != nil {
		return err
	}
	writeJSON(c.w, http.StatusOK, out)
	return nil
}

// auditAnswer is r as GET /v1/audit shows it.
func auditAnswer(r *AuditRecord) api.AuditRecord {
	return api.AuditRecord{ID: r.ID, Time: r.Time, Source: r.Source, Edge: r.Edge, Site: r.Site, ClientIP: r.ClientIP,
		Actor: r.Actor, KeyID: r.KeyID, Project: r.Project, Deployment: r.Deployment, DeploymentName: r.DeploymentName,
		Method: r.Method, Path: r.Path, Action: r.Action, Target: r.Target, Status: r.Status, DurationMS: r.DurationMS,
		RequestID: r.RequestID}
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
