package origin

import (
	"fmt"
	"net/http"
	"slices"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/internal/apierror"
)

// A project's rules over the API: GET /v1/projects/{p} shows them to
// whoever may manage the project; PATCH changes them, for admin users only.
// A project key never can, whatever it holds: the rules are the operator's
// bounds on what the tenant's keys may do.

// projectAnswer is p as listed.
func projectAnswer(p *Project) api.Project {
	return api.Project{ID: p.ID, Name: p.Name, CreatedAt: p.CreatedAt}
}

// projectDetail is p with its rules r, as GET and PATCH show it.
func projectDetail(p *Project, r *ProjectRules) api.ProjectDetail {
	v := api.ProjectDetail{ID: p.ID, Name: p.Name, CreatedAt: p.CreatedAt, AllowedUpstreams: r.AllowedUpstreams,
		Limits: api.Limits{MaxKeys: r.Limits.MaxKeys, MaxDeployments: r.Limits.MaxDeployments, MaxLinksPerKey: r.Limits.MaxLinksPerKey},
		Usage:  api.ProjectUsage{Keys: r.Keys, Deployments: r.Deployments}}
	v.TokensPerMinute, v.TokensPerDay, v.Quota = tokensAnswer(r.Tokens)
	v.MaxBudget, v.BudgetRefill = budgetAnswer(r.Tokens)
	return v
}

// projectLimitFields are the quotas of a project's PATCH body.
var projectLimitFields = []string{"max_keys", "max_deployments", "max_links_per_key"}

var projectFields = slices.Concat([]string{"allowed_upstreams"}, projectLimitFields, tokensFields)

// errUsersOnly refuses a project key what only admin users may do.
func errUsersOnly(what string) error {
	return apierror.New(http.StatusForbidden, apierror.PermissionDenied,
		"a project key cannot "+what+", whatever permissions it holds; log in as an admin user")
}

func (s *Server) getProject(c *call) error {
	r, err := s.store.rules(c.ctx(), c.project.ID)
	if err != nil {
		return err
	}
	writeJSON(c.w, http.StatusOK, projectDetail(c.project, r))
	return nil
}

func (s *Server) patchProject(c *call) error {
	if c.who.User == "" {
		return errUsersOnly("change a project's upstream policy, quotas or token bounds")
	}
	o, err := readObject(c.r, false, projectFields...)
	if err != nil {
		return err
	}
	var ch rulesChange
	var raws []string
	if present, null, err := o.get("allowed_upstreams", &raws, true, "a list of URL patterns and CIDRs, or null for the default"); err != nil {
		return err
	} else if present {
		ch.setPolicy = true
		if !null {
			if raws == nil {
				raws = []string{}
			}
			if ch.policy, err = parsePolicy(raws); err != nil {
				return err
			}
		}
	}
	for _, name := range projectLimitFields {
		var n int
		present, null, err := o.get(name, &n, true, "a whole number, or null for the default")
		if err != nil {
			return err
		}
		if !present {
			continue
		}
		if ch.limits == nil {
			ch.limits = map[string]*int{}
		}
		if null {
			ch.limits[name] = nil
			continue
		}
		if rg := limitRanges[name]; n < rg[0] || n > rg[1] {
			return validation(name, fmt.Sprintf("must be between %d and %d, or null for the default", rg[0], rg[1]))
		}
		ch.limits[name] = &n
	}
	if ch.tokens, err = decodeTokens(o); err != nil {
		return err
	}
	if err := c.readWait(); err != nil {
		return err
	}
	r, rev, err := s.store.setRules(c.ctx(), c.project.ID, ch)
	if err != nil {
		return err
	}
	// A change of the token bounds is events (every deployment re-sent);
	// rev is the last, which ?wait waits for. Any other change is none,
	// and rev the store's revision after it, as for a project's creation.
	v := projectDetail(c.project, r)
	return s.mutated(c, http.StatusOK, rev, &v, &v.Propagation, auditTarget{Target: c.project.ID, Changed: o.members()})
}

// decodeProjectName reads and checks a project create body's name.
func decodeProjectName(o object) (string, error) {
	var name string
	if present, _, err := o.get("name", &name, false, "a string"); err != nil {
		return "", err
	} else if !present {
		return "", validation("name", "is required")
	}
	if err := validName("name", name); err != nil {
		return "", err
	}
	if !secretNameRE.MatchString(name) {
		// Edges scope secrets by project name: EDGE_SECRET_<PROJECT>__<NAME>
		// must split one way only.
		return "", validation("name", "a project name is runs of letters and digits joined by single '.', '_' or '-'")
	}
	return name, nil
}

func (s *Server) createProject(c *call) error {
	if c.who.KeyID != "" {
		// A project key manages its own project only; a new project is
		// outside it whatever the key holds.
		return apierror.New(http.StatusForbidden, apierror.PermissionDenied, "a project key cannot create projects; log in as a user")
	}
	o, err := readObject(c.r, false, "name")
	if err != nil {
		return err
	}
	name, err := decodeProjectName(o)
	if err != nil {
		return err
	}
	if err := c.readWait(); err != nil {
		return err
	}
	// The revision is the store's at the project's creation (read in its
	// transaction, so right on every replica): edges never see projects, and
	// ?wait waits until they have applied every change made before it.
	p, rev, err := s.store.createProject(c.ctx(), name)
	if err != nil {
		return err
	}
	v := api.ProjectCreated{ID: p.ID, Name: p.Name, CreatedAt: p.CreatedAt, Revision: rev}
	return s.mutated(c, http.StatusCreated, rev, &v, &v.Propagation, auditTarget{Target: p.ID, Project: p.ID})
}

func (s *Server) listProjects(c *call) error {
	ps, err := s.store.listProjects(c.ctx())
	if err != nil {
		return err
	}
	if c.who.ProjectID != "" {
		ps = slices.DeleteFunc(ps, func(p Project) bool { return p.ID != c.who.ProjectID })
	}
	items := make([]api.Project, 0, len(ps))
	for i := range ps {
		items = append(items, projectAnswer(&ps[i]))
	}
	writeJSON(c.w, http.StatusOK, api.ProjectPage{Items: items})
	return nil
}
