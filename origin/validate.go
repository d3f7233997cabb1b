package origin

import (
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"unicode"

	"github.com/keymesh/keymesh/event"
)

var (
	nameRE       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	hostRE       = regexp.MustCompile(`^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?$`)
	siteRE       = regexp.MustCompile(`^(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,62})$`)
	secretNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)
	headerRE     = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

// DefaultMaxBodyBytes and DefaultMaxPromptChars are a new deployment's
// limits.
const (
	DefaultMaxBodyBytes   = 10 << 20
	DefaultMaxPromptChars = 10000
)

func validName(field, s string) error {
	if !nameRE.MatchString(s) {
		return validation(field, "must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	return nil
}

func validText(field, s string, max int) error {
	if len(s) > max {
		return validation(field, fmt.Sprintf("must be at most %d bytes", max))
	}
	for _, r := range s {
		if unicode.IsControl(r) && r != '\n' && r != '\t' {
			return validation(field, "must not contain control characters")
		}
	}
	return nil
}

var deploymentFields = []string{"name", "hosts", "path_prefix", "upstreams", "auth_enabled", "invalid_key_status",
	"upstream_auth", "rate_limit", "max_body_bytes", "max_prompt_chars"}

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
			if rl.RequestsPerMinute < 1 {
				return nil, validation("rate_limit", "requests_per_minute must be a positive number")
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
	seen := map[string]bool{}
	hosts := []string{}
	for _, h := range d.Hosts {
		h = strings.ToLower(strings.TrimSpace(h))
		if !hostRE.MatchString(h) || len(h) > 253 {
			return validation("hosts", fmt.Sprintf("%q is not a host name or *.suffix", h))
		}
		if !seen[h] {
			seen[h] = true
			hosts = append(hosts, h)
		}
	}
	sort.Strings(hosts)
	d.Hosts = hosts
	if !strings.HasPrefix(d.PathPrefix, "/") || strings.ContainsAny(d.PathPrefix, "?# \t\r\n") || len(d.PathPrefix) > 1024 {
		return validation("path_prefix", "must start with / and contain no spaces, ? or #")
	}
	if len(d.Upstreams) == 0 {
		return validation("upstreams", `must map at least one site (or "*") to a list of URLs`)
	}
	for site, urls := range d.Upstreams {
		if !siteRE.MatchString(site) {
			return validation("upstreams", fmt.Sprintf("%q is not a site name or *", site))
		}
		if len(urls) == 0 {
			return validation("upstreams", fmt.Sprintf("site %q has no URLs", site))
		}
		for _, raw := range urls {
			u, err := url.Parse(raw)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
				return validation("upstreams", fmt.Sprintf("site %q: %q is not an http(s) URL without credentials, query or fragment", site, raw))
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
		if !secretNameRE.MatchString(ua.Secret) {
			return validation("upstream_auth", "inject needs \"secret\": the name of an edge-local secret (letters, digits, '_', '.', '-')")
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
	if ua.Header != "" && !headerRE.MatchString(ua.Header) {
		return validation("upstream_auth", "header is not a valid header name")
	}
	if strings.ContainsAny(ua.Prefix, "\r\n") {
		return validation("upstream_auth", "prefix must not contain line breaks")
	}
	if d.RateLimit != nil && d.RateLimit.RequestsPerMinute < 1 {
		return validation("rate_limit", "requests_per_minute must be a positive number")
	}
	if d.MaxBodyBytes < 1 || d.MaxBodyBytes > 1<<30 {
		return validation("max_body_bytes", "must be between 1 and 1073741824")
	}
	if d.MaxPromptChars < 1 || d.MaxPromptChars > 100_000_000 {
		return validation("max_prompt_chars", "must be between 1 and 100000000")
	}
	return nil
}
