package origin

// GET /v1/usage (the ledger's sums, read_metrics) and GET /v1/key (the
// calling API key about itself, its usage included).
//
// /v1/usage needs read_metrics, not view_audit_logs: it answers sums per
// key, deployment, model and hour, the kind of number a dashboard or a
// billing export reads, and none of what makes the audit log sensitive
// (client addresses, paths, request ids, who did what). A project key sees
// its own project's sums only, as it does everywhere; a user sees every
// project's.

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

const (
	// maxUsageSpan bounds until - since of one usage query.
	maxUsageSpan = 366 * 24 * time.Hour
	// defaultUsageSpan is since's default: a day before until.
	defaultUsageSpan = 24 * time.Hour
	// defaultUsageRows and maxUsageRows bound the rows of one answer
	// (?limit=).
	defaultUsageRows = 1000
	maxUsageRows     = 10000
)

// usageGroups are the group_by values, in the order rows are sorted.
var usageGroups = []string{"hour", "day", "project", "key", "deployment", "model"}

// getUsage serves GET /v1/usage?project=&key_id=&deployment=&model=&since=
// &until=&group_by=&limit=.
func (s *Server) getUsage(c *call) error {
	q := c.r.URL.Query()
	now := s.cfg.now()
	var f usageFilter
	if ref := q.Get("project"); ref != "" {
		p, err := s.store.project(c.ctx(), ref)
		switch {
		case c.who.ProjectID != "" && (errors.Is(err, ErrNotFound) || err == nil && p.ID != c.who.ProjectID):
			return apierror.New(http.StatusForbidden, apierror.PermissionDenied, "this key may only read its own project's usage")
		case err != nil:
			return err
		}
		f.Project = p.ID
	}
	if c.who.ProjectID != "" {
		f.Project = c.who.ProjectID
	}
	f.KeyID, f.KeySet = q.Get("key_id"), q.Has("key_id")
	f.Model = q.Get("model")
	if ref := q.Get("deployment"); ref != "" {
		f.Deployment = ref
		if f.Project != "" {
			// A name is resolved within the project; an id of a deleted
			// deployment still selects its rows.
			if id, err := s.store.deploymentID(c.ctx(), s.store.db, f.Project, ref); err == nil {
				f.Deployment = id
			} else if !errors.Is(err, ErrNotFound) {
				return err
			}
		}
	}
	var err error
	if f.Since, f.Until, err = usageWindow(q.Get("since"), q.Get("until"), now); err != nil {
		return err
	}
	var g usageGroup
	var groups []string
	if v := q.Get("group_by"); v != "" {
		for _, name := range strings.Split(v, ",") {
			name = strings.TrimSpace(name)
			if !slices.Contains(usageGroups, name) {
				return validation("group_by", "a comma-separated list of "+strings.Join(usageGroups, ", "))
			}
			if slices.Contains(groups, name) {
				continue
			}
			groups = append(groups, name)
			switch name {
			case "hour":
				g.Hour = true
			case "day":
				g.Day = true
			case "project":
				g.Project = true
			case "key":
				g.Key = true
			case "deployment":
				g.Deployment = true
			case "model":
				g.Model = true
			}
		}
		if g.Hour && g.Day {
			return validation("group_by", "hour and day exclude each other")
		}
	}
	limit := defaultUsageRows
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxUsageRows {
			return validation("limit", fmt.Sprintf("must be a number between 1 and %d", maxUsageRows))
		}
		limit = n
	}
	rows, err := s.store.queryUsage(c.ctx(), f, g, limit+1)
	if err != nil {
		return err
	}
	out := api.UsageReport{Items: []api.UsageRow{}, Since: f.Since, Until: f.Until, GroupBy: groups, Truncated: len(rows) > limit}
	if out.GroupBy == nil {
		out.GroupBy = []string{}
	}
	for i := range rows[:min(len(rows), limit)] {
		out.Items = append(out.Items, usageRowAnswer(&rows[i], g))
	}
	writeJSON(c.w, http.StatusOK, out)
	return nil
}

// usageWindow reads since and until (each an RFC 3339 time, a YYYY-MM-DD
// date or a duration back from now; until defaults to now, since to a day
// before until), rounded outwards to whole hours.
func usageWindow(sinceArg, untilArg string, now time.Time) (time.Time, time.Time, error) {
	until := now
	if untilArg != "" {
		t, err := parseSince(untilArg, now)
		if err != nil {
			return time.Time{}, time.Time{}, validation("until", "must be an RFC 3339 time, a YYYY-MM-DD date or a duration such as 1h")
		}
		until = t
	}
	since := until.Add(-defaultUsageSpan)
	if sinceArg != "" {
		t, err := parseSince(sinceArg, now)
		if err != nil {
			return time.Time{}, time.Time{}, err
		}
		since = t
	}
	since = since.UTC().Truncate(time.Hour)
	if u := until.UTC().Truncate(time.Hour); u.Before(until) {
		until = u.Add(time.Hour)
	} else {
		until = u
	}
	switch {
	case !since.Before(until):
		return time.Time{}, time.Time{}, validation("since", "must be before until")
	case until.Sub(since) > maxUsageSpan:
		return time.Time{}, time.Time{}, validation("since", fmt.Sprintf("until - since must be at most %d days", maxUsageSpan/(24*time.Hour)))
	}
	return since, until, nil
}

// usageRowAnswer is r as the API shows it: only the grouped members.
func usageRowAnswer(r *usageRow, g usageGroup) api.UsageRow {
	out := api.UsageRow{UsageCounts: countsAnswer(r.Counts)}
	t := time.Unix(r.Bucket, 0).UTC()
	if g.Hour {
		out.Hour = &t
	}
	if g.Day {
		out.Day = &t
	}
	if g.Project {
		out.Project = &r.Project
	}
	if g.Key {
		out.KeyID = &r.KeyID
	}
	if g.Deployment {
		out.Deployment = &r.Deployment
	}
	if g.Model {
		out.Model = &r.Model
	}
	return out
}

func countsAnswer(c usageCounts) api.UsageCounts {
	return api.UsageCounts{Requests: c.Requests, PromptTokens: c.PromptTokens, CompletionTokens: c.CompletionTokens,
		CachedTokens: c.CachedTokens, EstimatedRequests: c.EstimatedRequests, Cost: nanosNumber(c.Cost)}
}

// errNotAKey answers GET /v1/key called with an admin token.
var errNotAKey = apierror.New(http.StatusUnauthorized, apierror.AuthenticationFailed,
	"GET /v1/key describes the API key that calls it: send the key (X-API-Key or Authorization: Bearer), not an admin token")

// getOwnKey serves GET /v1/key: the calling key (authenticated as any
// admin call is: an unknown, disabled or expired key is 401), its linked
// deployments and its usage today and this month. Any key may call it,
// whatever its permissions: it says nothing the key's holder could not
// learn by using it.
func (s *Server) getOwnKey(c *call) error {
	if c.who.KeyID == "" {
		return errNotAKey
	}
	k, err := s.store.getKey(c.ctx(), c.who.ProjectID, c.who.KeyID)
	if errors.Is(err, ErrNotFound) {
		return errAuth // deleted since it authenticated
	}
	if err != nil {
		return err
	}
	p, err := s.store.project(c.ctx(), k.ProjectID)
	if err != nil {
		return err
	}
	deps, err := s.store.listDeployments(c.ctx(), s.store.db, k.ProjectID)
	if err != nil {
		return err
	}
	names := map[string]string{}
	for _, d := range deps {
		names[d.ID] = d.Name
	}
	out := api.KeySelf{ID: k.ID, Name: k.Name, Project: k.ProjectID, ProjectName: p.Name, Permissions: k.Permissions,
		Deployments: []api.KeyDeployment{}, ExpiresAt: k.ExpiresAt, RateLimit: rateLimitAnswer(k.RateLimit)}
	if out.Permissions == nil {
		out.Permissions = []string{}
	}
	for _, id := range k.Deployments {
		out.Deployments = append(out.Deployments, api.KeyDeployment{ID: id, Name: names[id]})
	}
	out.TokensPerMinute, out.TokensPerDay, out.Quota = tokensAnswer(k.Tokens)
	now := s.cfg.now().UTC()
	today := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	for _, period := range []struct {
		since time.Time
		into  *api.UsagePeriod
	}{{today, &out.Usage.Today}, {month, &out.Usage.Month}} {
		counts, err := s.keyUsageSince(c, k, period.since, today.AddDate(0, 0, 1))
		if err != nil {
			return err
		}
		*period.into = api.UsagePeriod{Since: period.since, UsageCounts: countsAnswer(counts)}
	}
	// A quota's or budget's current period: today, this month, or ever.
	inPeriod := func(refill string) (usageCounts, error) {
		since := time.Unix(0, 0).UTC()
		switch refill {
		case event.QuotaRefillDaily:
			since = today
		case event.QuotaRefillMonthly:
			since = month
		}
		return s.keyUsageSince(c, k, since, today.AddDate(0, 0, 1))
	}
	if q := k.Tokens; q != nil && q.Quota != nil {
		used, err := inPeriod(q.Quota.Refill)
		if err != nil {
			return err
		}
		n := used.PromptTokens + used.CompletionTokens
		if q.Quota.Requests > 0 {
			n = used.Requests
		}
		out.QuotaUsed = &n
	}
	out.MaxBudget, out.BudgetRefill = budgetAnswer(k.Tokens)
	if b := k.Tokens; b != nil && b.Budget != nil {
		used, err := inPeriod(b.Budget.Refill)
		if err != nil {
			return err
		}
		n := nanosNumber(used.Cost)
		out.BudgetSpent = &n
	}
	writeJSON(c.w, http.StatusOK, out)
	return nil
}

// keyUsageSince sums the ledger's rows of k in [since, until).
func (s *Server) keyUsageSince(c *call, k *Key, since, until time.Time) (usageCounts, error) {
	rows, err := s.store.queryUsage(c.ctx(), usageFilter{Project: k.ProjectID, KeyID: k.ID, KeySet: true,
		Since: since, Until: until}, usageGroup{}, 1)
	if err != nil || len(rows) == 0 {
		return usageCounts{}, err
	}
	return rows[0].Counts, nil
}
