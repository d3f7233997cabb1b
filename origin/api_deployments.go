package origin

// The deployment endpoints: a deployment body's decoding (decodeDeployment)
// and validation (validateDeployment) next to the handlers that use them.

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
)

// deploymentTarget is the audit target of a change to d.
func deploymentTarget(d *event.Deployment) auditTarget {
	return auditTarget{Target: d.ID, Deployment: d.ID, Project: d.Project}
}

// deploymentAnswer is d as the API shows it, without propagation (mutated
// sets it under ?wait).
func deploymentAnswer(d *event.Deployment) api.Deployment {
	v := api.Deployment{
		ID: d.ID, Project: d.Project, Name: d.Name, Hosts: d.Hosts, PathPrefix: d.PathPrefix, StripPrefix: d.StripPrefix, Upstreams: d.Upstreams,
		AuthEnabled: d.AuthEnabled, InvalidKeyStatus: d.InvalidKeyStatus, UpstreamAuth: upstreamAuthAnswer(d.UpstreamAuth),
		RateLimit: rateLimitAnswer(d.RateLimit), MaxBodyBytes: d.MaxBodyBytes, MaxPromptChars: d.MaxPromptChars,
		Models: modelsAnswer(d.Models), MaxConcurrency: concurrencyAnswer(d.MaxConcurrency), DefaultMaxTokens: int64Answer(d.DefaultMaxTokens),
		Revision: d.Revision, Warnings: []api.Warning{},
	}
	v.TokensPerMinute, v.TokensPerDay, v.Quota = tokensAnswer(d.Tokens)
	v.MaxBudget, v.BudgetRefill = budgetAnswer(d.Tokens)
	v.Pricing = pricingAnswer(d.Pricing)
	if v.Hosts == nil {
		v.Hosts = []string{}
	}
	return v
}

// edgeSites returns the sites of the edges this replica's registry knows,
// live or not, sorted.
func (s *Server) edgeSites() []string {
	var sites []string
	for _, e := range s.edges.list() {
		if e.Site != "" && !slices.Contains(sites, e.Site) {
			sites = append(sites, e.Site)
		}
	}
	slices.Sort(sites)
	return sites
}

// deploymentWarnings is what is wrong with d that the origin accepts: a site
// of a known edge (sites, from edgeSites) that d has no upstream for, with
// no "*" entry either — its edges answer 502 (proxy: route.noUpstream).
func deploymentWarnings(d *event.Deployment, sites []string) []api.Warning {
	out := []api.Warning{}
	if len(d.Upstreams["*"]) > 0 {
		return out
	}
	for _, site := range sites {
		if len(d.Upstreams[site]) == 0 {
			out = append(out, api.Warning{Code: api.WarningNoUpstreamForSite, Site: site,
				Message: fmt.Sprintf(`no upstream for site %q and no "*" entry: its edges answer this deployment's requests 502 "no upstream configured for site %s"`, site, site)})
		}
	}
	return out
}

// upstreamAuthAnswer is ua as the API shows it.
func upstreamAuthAnswer(ua *event.UpstreamAuth) *api.UpstreamAuth {
	if ua == nil {
		return nil
	}
	return &api.UpstreamAuth{Mode: ua.Mode, Header: ua.Header, Prefix: ua.Prefix, Secret: ua.Secret}
}

func (s *Server) createDeployment(c *call) error {
	o, err := readObject(c.r, false, deploymentFields...)
	if err != nil {
		return err
	}
	apply, err := decodeDeployment(o)
	if err != nil {
		return err
	}
	if _, ok := o["name"]; !ok {
		return validation("name", "is required")
	}
	if _, ok := o["upstreams"]; !ok {
		return validation("upstreams", "is required")
	}
	if err := c.readWait(); err != nil {
		return err
	}
	d := defaultDeployment()
	d.ID, d.Project, d.ProjectName = newID("dep"), c.project.ID, c.project.Name
	apply(d)
	if err := validateDeployment(d); err != nil {
		return err
	}
	if d, err = s.store.createDeployment(c.ctx(), d); err != nil {
		return err
	}
	v := deploymentAnswer(d)
	v.Warnings = deploymentWarnings(d, s.edgeSites())
	return s.mutated(c, http.StatusCreated, d.Revision, &v, &v.Propagation, deploymentTarget(d))
}

func (s *Server) listDeployments(c *call) error {
	ds, err := s.store.listDeployments(c.ctx(), s.store.db, c.project.ID)
	if err != nil {
		return err
	}
	items := make([]api.Deployment, 0, len(ds))
	sites := s.edgeSites()
	for i := range ds {
		v := deploymentAnswer(&ds[i])
		v.Warnings = deploymentWarnings(&ds[i], sites)
		items = append(items, v)
	}
	writeJSON(c.w, http.StatusOK, api.DeploymentPage{Items: items})
	return nil
}

func (s *Server) getDeployment(c *call) error {
	d, err := s.store.getDeployment(c.ctx(), c.project.ID, c.r.PathValue("id"))
	if err != nil {
		return err
	}
	v := deploymentAnswer(d)
	v.Warnings = deploymentWarnings(d, s.edgeSites())
	writeJSON(c.w, http.StatusOK, v)
	return nil
}

func (s *Server) patchDeployment(c *call) error {
	o, err := readObject(c.r, false, deploymentFields...)
	if err != nil {
		return err
	}
	apply, err := decodeDeployment(o)
	if err != nil {
		return err
	}
	if err := c.readWait(); err != nil {
		return err
	}
	d, err := s.store.updateDeployment(c.ctx(), c.project.ID, c.r.PathValue("id"), func(d *event.Deployment) error {
		apply(d)
		return validateDeployment(d)
	})
	if err != nil {
		return err
	}
	v := deploymentAnswer(d)
	v.Warnings = deploymentWarnings(d, s.edgeSites())
	t := deploymentTarget(d)
	t.Changed = o.members()
	return s.mutated(c, http.StatusOK, d.Revision, &v, &v.Propagation, t)
}

func (s *Server) deleteDeployment(c *call) error {
	if err := c.readWait(); err != nil {
		return err
	}
	rev, err := s.store.deleteDeployment(c.ctx(), c.project.ID, c.r.PathValue("id"))
	if err != nil {
		return err
	}
	ref := c.r.PathValue("id")
	return s.mutated(c, http.StatusNoContent, rev, nil, nil, auditTarget{Target: ref, Deployment: ref})
}

func (s *Server) deploymentKeys(c *call) error {
	keys, err := s.store.deploymentKeys(c.ctx(), c.project.ID, c.r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(c.w, http.StatusOK, keyPage(keys, nil))
	return nil
}

func (s *Server) linkKey(on bool) handlerFunc {
	return func(c *call) error {
		if _, err := readObject(c.r, true); err != nil {
			return err
		}
		if err := c.readWait(); err != nil {
			return err
		}
		k, err := s.store.link(c.ctx(), c.project.ID, c.r.PathValue("id"), c.r.PathValue("key_id"), on, c.mayActOn)
		if err != nil {
			return err
		}
		// The link is named as the request gave it: the key and the
		// deployment reference of the path.
		ref := c.r.PathValue("key_id")
		t := auditTarget{Target: ref, KeyID: ref, Deployment: c.r.PathValue("id"), Project: k.ProjectID,
			Changed: []string{"deployments"}}
		v := keyAnswer(k)
		return s.mutated(c, http.StatusOK, k.Revision, &v, &v.Propagation, t)
	}
}

// DefaultMaxBodyBytes and DefaultMaxPromptChars are a new deployment's
// limits.
const (
	DefaultMaxBodyBytes   = 10 << 20
	DefaultMaxPromptChars = 10000
)

var deploymentFields = slices.Concat([]string{"name", "hosts", "path_prefix", "strip_prefix", "upstreams", "auth_enabled", "invalid_key_status",
	"upstream_auth", "rate_limit", "max_body_bytes", "max_prompt_chars", "models", "max_concurrency", "default_max_tokens", "pricing"}, tokensFields)

func defaultDeployment() *event.Deployment {
	return &event.Deployment{
		Hosts:            []string{},
		PathPrefix:       "/",
		AuthEnabled:      true,
		InvalidKeyStatus: 401,
		UpstreamAuth:     &event.UpstreamAuth{Mode: event.UpstreamAuthNone},
		MaxBodyBytes:     DefaultMaxBodyBytes,
		MaxPromptChars:   DefaultMaxPromptChars,
	}
}

// decodeDeployment type-checks the body and returns a function applying the
// present members to a deployment (validated afterwards as a whole).
func decodeDeployment(o object) (func(*event.Deployment), error) {
	var fns []func(*event.Deployment)
	var name string
	if present, _, err := o.get("name", &name, false, "a string"); err != nil {
		return nil, err
	} else if present {
		fns = append(fns, func(d *event.Deployment) { d.Name = name })
	}
	var hosts []string
	if present, null, err := o.get("hosts", &hosts, true, "a list of host names"); err != nil {
		return nil, err
	} else if present {
		if null || hosts == nil {
			hosts = []string{}
		}
		fns = append(fns, func(d *event.Deployment) { d.Hosts = hosts })
	}
	var prefix string
	if present, null, err := o.get("path_prefix", &prefix, true, "a string starting with /"); err != nil {
		return nil, err
	} else if present {
		if null || prefix == "" {
			prefix = "/"
		}
		fns = append(fns, func(d *event.Deployment) { d.PathPrefix = prefix })
	}
	var strip bool
	if present, _, err := o.get("strip_prefix", &strip, false, "true or false"); err != nil {
		return nil, err
	} else if present {
		fns = append(fns, func(d *event.Deployment) { d.StripPrefix = strip })
	}
	var ups map[string][]string
	if present, _, err := o.get("upstreams", &ups, false, `an object mapping a site (or "*") to a list of URLs`); err != nil {
		return nil, err
	} else if present {
		fns = append(fns, func(d *event.Deployment) { d.Upstreams = ups })
	}
	var auth bool
	if present, _, err := o.get("auth_enabled", &auth, false, "true or false"); err != nil {
		return nil, err
	} else if present {
		fns = append(fns, func(d *event.Deployment) { d.AuthEnabled = auth })
	}
	var status int
	if present, _, err := o.get("invalid_key_status", &status, false, "401 or 403"); err != nil {
		return nil, err
	} else if present {
		fns = append(fns, func(d *event.Deployment) { d.InvalidKeyStatus = status })
	}
	var ua event.UpstreamAuth
	if present, null, err := o.get("upstream_auth", &ua, true, `{"mode": "none"|"inject"|"passthrough", ...}`); err != nil {
		return nil, err
	} else if present {
		if null {
			ua = event.UpstreamAuth{Mode: event.UpstreamAuthNone}
		}
		fns = append(fns, func(d *event.Deployment) { c := ua; d.UpstreamAuth = &c })
	}
	var rl event.RateLimit
	if present, null, err := o.get("rate_limit", &rl, true, `{"requests_per_minute": N} or null`); err != nil {
		return nil, err
	} else if present {
		if null {
			fns = append(fns, func(d *event.Deployment) { d.RateLimit = nil })
		} else {
			if err := validRateLimit(&rl); err != nil {
				return nil, err
			}
			fns = append(fns, func(d *event.Deployment) { c := rl; d.RateLimit = &c })
		}
	}
	var mbb int64
	if present, _, err := o.get("max_body_bytes", &mbb, false, "a positive number of bytes"); err != nil {
		return nil, err
	} else if present {
		fns = append(fns, func(d *event.Deployment) { d.MaxBodyBytes = mbb })
	}
	var mpc int
	if present, _, err := o.get("max_prompt_chars", &mpc, false, "a positive number"); err != nil {
		return nil, err
	} else if present {
		fns = append(fns, func(d *event.Deployment) { d.MaxPromptChars = mpc })
	}
	if present, models, err := decodeModels(o); err != nil {
		return nil, err
	} else if present {
		fns = append(fns, func(d *event.Deployment) { d.Models = models })
	}
	if present, n, err := decodeConcurrency(o); err != nil {
		return nil, err
	} else if present {
		fns = append(fns, func(d *event.Deployment) { d.MaxConcurrency = n })
	}
	if present, n, err := decodeDefaultMaxTokens(o); err != nil {
		return nil, err
	} else if present {
		fns = append(fns, func(d *event.Deployment) { d.DefaultMaxTokens = n })
	}
	if present, p, err := decodePricing(o); err != nil {
		return nil, err
	} else if present {
		fns = append(fns, func(d *event.Deployment) { d.Pricing = p })
	}
	if tokens, err := decodeTokens(o); err != nil {
		return nil, err
	} else if tokens.touches() {
		fns = append(fns, func(d *event.Deployment) { d.Tokens = tokens.apply(d.Tokens) })
	}
	return func(d *event.Deployment) {
		for _, f := range fns {
			f(d)
		}
	}, nil
}

// validateDeployment checks a whole deployment and normalises it (host
// case, upstream_auth defaults).
func validateDeployment(d *event.Deployment) error {
	if err := validName("name", d.Name); err != nil {
		return err
	}
	if len(d.Hosts) > maxHosts {
		return validation("hosts", fmt.Sprintf("at most %d hosts", maxHosts))
	}
	seen := map[string]bool{}
	hosts := []string{}
	for _, h := range d.Hosts {
		if len(h) > maxHostLen {
			return validation("hosts", fmt.Sprintf("a host name is at most %d bytes", maxHostLen))
		}
		h = strings.ToLower(strings.TrimSpace(h))
		if !hostRE.MatchString(h) || len(h) > maxHostLen {
			return validation("hosts", fmt.Sprintf("%q is not a host name or *.suffix", h))
		}
		if !seen[h] {
			seen[h] = true
			hosts = append(hosts, h)
		}
	}
	sort.Strings(hosts)
	d.Hosts = hosts
	if err := validPathPrefix(d.PathPrefix); err != nil {
		return err
	}
	if len(d.Upstreams) == 0 {
		return validation("upstreams", `must map at least one site (or "*") to a list of URLs`)
	}
	if len(d.Upstreams) > maxSites {
		return validation("upstreams", fmt.Sprintf("at most %d sites", maxSites))
	}
	total := 0
	for _, site := range slices.Sorted(maps.Keys(d.Upstreams)) {
		urls := d.Upstreams[site]
		if !siteRE.MatchString(site) {
			return validation("upstreams", fmt.Sprintf("%q is not a site name or *", truncate(site, 80)))
		}
		if len(urls) == 0 {
			return validation("upstreams", fmt.Sprintf("site %q has no URLs", site))
		}
		if len(urls) > maxURLsPerSite {
			return validation("upstreams", fmt.Sprintf("site %q: at most %d URLs a site", site, maxURLsPerSite))
		}
		if total += len(urls); total > maxUpstreamURLs {
			return validation("upstreams", fmt.Sprintf("at most %d URLs in all", maxUpstreamURLs))
		}
		for _, raw := range urls {
			if _, _, err := parseUpstreamURL(raw); err != nil {
				return validation("upstreams", fmt.Sprintf("site %q: %v", site, err))
			}
		}
	}
	if d.InvalidKeyStatus != 401 && d.InvalidKeyStatus != 403 {
		return validation("invalid_key_status", "must be 401 or 403")
	}
	if d.UpstreamAuth == nil {
		d.UpstreamAuth = &event.UpstreamAuth{Mode: event.UpstreamAuthNone}
	}
	ua := d.UpstreamAuth
	switch ua.Mode {
	case event.UpstreamAuthNone:
		ua.Header, ua.Prefix, ua.Secret = "", "", ""
	case event.UpstreamAuthInject:
		if !secretNameRE.MatchString(ua.Secret) || len(ua.Secret) > maxSecretNameLen {
			return validation("upstream_auth", fmt.Sprintf("inject needs \"secret\": the name of one of this project's edge-local secrets, "+
				"at most %d letters and digits, which single '.', '_' or '-' may join (no '/', no \"__\")", maxSecretNameLen))
		}
		if ua.Header == "" {
			ua.Header = "Authorization"
			if ua.Prefix == "" {
				ua.Prefix = "Bearer "
			}
		}
	case event.UpstreamAuthPassthrough:
		if ua.Header == "" {
			ua.Header = "Authorization"
		}
		ua.Secret = ""
	default:
		return validation("upstream_auth", `mode must be "none", "inject" or "passthrough"`)
	}
	if ua.Header != "" && (!headerRE.MatchString(ua.Header) || len(ua.Header) > maxHeaderNameLen) {
		return validation("upstream_auth", fmt.Sprintf("header is not a valid header name of at most %d bytes", maxHeaderNameLen))
	}
	if len(ua.Prefix) > maxAuthPrefixLen {
		return validation("upstream_auth", fmt.Sprintf("prefix must be at most %d bytes", maxAuthPrefixLen))
	}
	for i := 0; i < len(ua.Prefix); i++ {
		if ua.Prefix[i] < ' ' || ua.Prefix[i] > '~' {
			return validation("upstream_auth", "prefix must be printable ASCII")
		}
	}
	if err := validRateLimit(d.RateLimit); err != nil {
		return err
	}
	if d.MaxBodyBytes < 1 || d.MaxBodyBytes > 1<<30 {
		return validation("max_body_bytes", "must be between 1 and 1073741824")
	}
	if d.MaxPromptChars < 1 || d.MaxPromptChars > 100_000_000 {
		return validation("max_prompt_chars", "must be between 1 and 100000000")
	}
	return nil
}

// validPathPrefix checks a deployment's path_prefix: what an edge routes
// on, compared bytewise with the request's normalised path.
func validPathPrefix(p string) error {
	if !strings.HasPrefix(p, "/") || len(p) > maxPathPrefixLen {
		return validation("path_prefix", fmt.Sprintf("must start with / and be at most %d bytes", maxPathPrefixLen))
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c >= 0x7f || c == '?' || c == '#' || c == '%' {
			return validation("path_prefix", "must be visible ASCII without spaces, ?, # or %-escapes")
		}
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return validation("path_prefix", "must not have . or .. segments")
		}
	}
	if strings.Contains(p, "//") {
		return validation("path_prefix", "must not have empty segments (//)")
	}
	return nil
}
