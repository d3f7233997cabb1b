package origin

// The key endpoints: a key body's decoding and validation (decodeKeyInput,
// decodeRotate) next to the handlers that use them.

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

// keyTarget is the audit target of a change to k.
func keyTarget(k *Key) auditTarget {
	return auditTarget{Target: k.ID, KeyID: k.ID, Project: k.ProjectID}
}

// keyAnswer is k as the API shows it, without its secret (only create and
// rotate set Secret) and propagation (mutated sets it under ?wait).
func keyAnswer(k *Key) api.Key {
	v := api.Key{
		ID: k.ID, Project: k.ProjectID, Name: k.Name, Description: k.Description, Prefix: k.Prefix,
		Permissions: k.Permissions, Deployments: k.Deployments, ExpiresAt: k.ExpiresAt, RateLimit: rateLimitAnswer(k.RateLimit),
		Models: modelsAnswer(k.Models), MaxConcurrency: concurrencyAnswer(k.MaxConcurrency),
		Disabled: k.Disabled, CreatedAt: k.CreatedAt, UpdatedAt: k.UpdatedAt, Revision: k.Revision,
	}
	v.TokensPerMinute, v.TokensPerDay, v.Quota = tokensAnswer(k.Tokens)
	v.MaxBudget, v.BudgetRefill = budgetAnswer(k.Tokens)
	if v.Permissions == nil {
		v.Permissions = []string{}
	}
	if v.Deployments == nil {
		v.Deployments = []string{}
	}
	return v
}

// keyPage is keys as one page of a listing; next is the cursor of the page
// after it (nil at the end).
func keyPage(keys []*Key, next *string) api.KeyPage {
	items := make([]api.Key, 0, len(keys))
	for _, k := range keys {
		items = append(items, keyAnswer(k))
	}
	return api.KeyPage{Items: items, NextCursor: next}
}

// rateLimitAnswer is rl as the API shows it (nil: no limit).
func rateLimitAnswer(rl *event.RateLimit) *api.RateLimit {
	if rl == nil {
		return nil
	}
	return &api.RateLimit{RequestsPerMinute: rl.RequestsPerMinute}
}

// keyFields are the members of a key patch (a create takes
// expires_in_days too). Built with slices.Concat and never appended to in
// place: handlers run at once.
var keyFields = slices.Concat([]string{"name", "description", "permissions", "deployments", "expires_at", "rate_limit", "models", "max_concurrency", "disabled"},
	tokensFields)

// keyInput is a decoded key create/patch body; nil pointers are absent.
type keyInput struct {
	name, description *string
	permissions       *[]string
	deployments       *[]string
	expiresSet        bool
	expiresAt         *time.Time
	rateLimitSet      bool
	rateLimit         *event.RateLimit
	modelsSet         bool
	models            []string // nil: any
	concurrencySet    bool
	maxConcurrency    int // 0: none
	tokens            tokensChange
	disabled          *bool
}

func (s *Server) decodeKeyInput(c *call, o object, create bool) (*keyInput, error) {
	in := &keyInput{}
	var err error
	var str string
	if present, _, err := o.get("name", &str, false, "a string"); err != nil {
		return nil, err
	} else if present {
		if err := validText("name", str, maxKeyNameLen); err != nil {
			return nil, err
		}
		in.name = &str
	}
	var desc string
	if present, _, err := o.get("description", &desc, false, "a string"); err != nil {
		return nil, err
	} else if present {
		if err := validText("description", desc, maxDescriptionLen); err != nil {
			return nil, err
		}
		in.description = &desc
	}
	var perms []string
	if present, null, err := o.get("permissions", &perms, create, "a list of permission names"); err != nil {
		return nil, err
	} else if present && !null {
		if len(perms) > 4*len(event.Permissions) {
			return nil, validation("permissions", fmt.Sprintf("at most %d entries", 4*len(event.Permissions)))
		}
		seen := map[string]bool{}
		out := []string{}
		for _, p := range perms {
			if !event.ValidPermission(p) {
				return nil, validation("permissions", fmt.Sprintf("unknown permission %q", p))
			}
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
		if err := c.mayGrant(out); err != nil {
			return nil, err
		}
		in.permissions = &out
	}
	var deps []string
	if present, _, err := o.get("deployments", &deps, false, "a list of deployment ids or names"); err != nil {
		return nil, err
	} else if present {
		if deps == nil {
			deps = []string{}
		}
		if len(deps) > maxDeploymentLinks {
			return nil, validation("deployments", fmt.Sprintf("at most %d entries", maxDeploymentLinks))
		}
		for _, d := range deps {
			if d == "" || len(d) > maxRefLen {
				return nil, validation("deployments", fmt.Sprintf("an entry is a deployment id or name of 1-%d bytes", maxRefLen))
			}
		}
		in.deployments = &deps
	}
	var exp string
	if present, null, err := o.get("expires_at", &exp, true, "an RFC 3339 time, a YYYY-MM-DD date, or null"); err != nil {
		return nil, err
	} else if present {
		in.expiresSet = true
		if len(exp) > maxExpiryLen {
			return nil, validation("expires_at", fmt.Sprintf("must be at most %d bytes", maxExpiryLen))
		}
		if !null {
			t, err := parseExpiry(exp)
			if err != nil {
				return nil, err
			}
			in.expiresAt = &t
		}
	}
	if create {
		var days int
		if present, null, err := o.get("expires_in_days", &days, true, "a whole number of days"); err != nil {
			return nil, err
		} else if present && !null {
			if in.expiresSet && in.expiresAt != nil {
				return nil, validation("expires_in_days", "give expires_at or expires_in_days, not both")
			}
			if days < 1 || days > maxExpiresInDays {
				return nil, validation("expires_in_days", fmt.Sprintf("must be between 1 and %d", maxExpiresInDays))
			}
			t := time.Now().UTC().Add(time.Duration(days) * 24 * time.Hour).Truncate(time.Second)
			in.expiresSet, in.expiresAt = true, &t
		}
		if in.expiresAt != nil && !in.expiresAt.After(time.Now()) {
			return nil, validation("expires_at", "must be in the future")
		}
	}
	var rl event.RateLimit
	if present, null, err := o.get("rate_limit", &rl, true, `{"requests_per_minute": N} or null`); err != nil {
		return nil, err
	} else if present {
		in.rateLimitSet = true
		if !null {
			if err := validRateLimit(&rl); err != nil {
				return nil, err
			}
			in.rateLimit = &rl
		}
	}
	if in.modelsSet, in.models, err = decodeModels(o); err != nil {
		return nil, err
	}
	if in.concurrencySet, in.maxConcurrency, err = decodeConcurrency(o); err != nil {
		return nil, err
	}
	if in.tokens, err = decodeTokens(o); err != nil {
		return nil, err
	}
	var dis bool
	if present, _, err := o.get("disabled", &dis, false, "true or false"); err != nil {
		return nil, err
	} else if present {
		in.disabled = &dis
	}
	return in, nil
}

// decodeRotate reads and checks a rotate body: the grace the old secret
// keeps working for (0 when absent).
func decodeRotate(o object) (time.Duration, error) {
	var grace int64
	if _, _, err := o.get("grace_seconds", &grace, true, "a whole number of seconds"); err != nil {
		return 0, err
	}
	if grace < 0 || grace > maxGraceSeconds {
		return 0, validation("grace_seconds", "must be between 0 and 2592000 (30 days)")
	}
	return time.Duration(grace) * time.Second, nil
}

// mayGrant refuses a project key giving a key a permission the caller does
// not hold itself (users may grant anything).
func (c *call) mayGrant(perms []string) error {
	if missing := c.who.lacking(perms); len(missing) > 0 {
		return apierror.New(http.StatusForbidden, apierror.PermissionDenied, "a key cannot grant a permission it does not hold").
			WithDetails(map[string]any{"missing_permissions": missing})
	}
	return nil
}

// mayActOn refuses a project key rotating, changing, linking, unlinking or
// deleting a key that holds a permission the caller lacks: rotating would
// hand the caller that key's secret, and the rest would let a lesser key
// tamper with a greater one. It runs inside the mutation's transaction, on
// the key as stored. Users may act on any key.
func (c *call) mayActOn(k *Key) error {
	if missing := c.who.lacking(k.Permissions); len(missing) > 0 {
		return apierror.New(http.StatusForbidden, apierror.PermissionDenied, "a key may only manage keys whose permissions it holds itself").
			WithDetails(map[string]any{"missing_permissions": missing})
	}
	return nil
}

func (in *keyInput) apply(k *Key) {
	if in.name != nil {
		k.Name = *in.name
	}
	if in.description != nil {
		k.Description = *in.description
	}
	if in.permissions != nil {
		k.Permissions = *in.permissions
	}
	if in.expiresSet {
		k.ExpiresAt = in.expiresAt
	}
	if in.rateLimitSet {
		k.RateLimit = in.rateLimit
	}
	if in.modelsSet {
		k.Models = in.models
	}
	if in.concurrencySet {
		k.MaxConcurrency = in.maxConcurrency
	}
	k.Tokens = in.tokens.apply(k.Tokens)
	if in.disabled != nil {
		k.Disabled = *in.disabled
	}
}

func (s *Server) createKey(c *call) error {
	o, err := readObject(c.r, true, slices.Concat(keyFields, []string{"expires_in_days"})...)
	if err != nil {
		return err
	}
	in, err := s.decodeKeyInput(c, o, true)
	if err != nil {
		return err
	}
	if err := c.readWait(); err != nil {
		return err
	}
	secret, h, err := newSecret()
	if err != nil {
		return err
	}
	k := &Key{ID: newID("key"), ProjectID: c.project.ID, Prefix: apikey.Display(secret), Permissions: slices.Clone(event.DefaultPermissions)}
	in.apply(k)
	if err := c.mayGrant(k.Permissions); err != nil { // the defaults, when none were given
		return err
	}
	var deps []string
	if in.deployments != nil {
		deps = *in.deployments
	}
	if k, err = s.store.createKey(c.ctx(), k, h, deps); err != nil {
		return err
	}
	v := keyAnswer(k)
	v.Secret = secret
	return s.mutated(c, http.StatusCreated, k.Revision, &v, &v.Propagation, keyTarget(k))
}

func (s *Server) listKeys(c *call) error {
	q := c.r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return validation("limit", "must be a number between 1 and 1000")
		}
		limit = n
	}
	after := ""
	if v := q.Get("cursor"); v != "" {
		if len(v) > maxCursorLen {
			return validation("cursor", "is not a cursor returned by this API")
		}
		b, err := base64.RawURLEncoding.DecodeString(v)
		if err != nil {
			return validation("cursor", "is not a cursor returned by this API")
		}
		after = string(b)
	}
	keys, more, err := s.store.listKeys(c.ctx(), c.project.ID, after, limit)
	if err != nil {
		return err
	}
	var next *string
	if more && len(keys) > 0 {
		cur := base64.RawURLEncoding.EncodeToString([]byte(keys[len(keys)-1].ID))
		next = &cur
	}
	writeJSON(c.w, http.StatusOK, keyPage(keys, next))
	return nil
}

func (s *Server) getKey(c *call) error {
	k, err := s.store.getKey(c.ctx(), c.project.ID, c.r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(c.w, http.StatusOK, keyAnswer(k))
	return nil
}

func (s *Server) patchKey(c *call) error {
	o, err := readObject(c.r, false, keyFields...)
	if err != nil {
		return err
	}
	in, err := s.decodeKeyInput(c, o, false)
	if err != nil {
		return err
	}
	if err := c.readWait(); err != nil {
		return err
	}
	k, err := s.store.updateKey(c.ctx(), c.project.ID, c.r.PathValue("id"), func(k *Key) error {
		if err := c.mayActOn(k); err != nil {
			return err
		}
		in.apply(k)
		return nil
	}, in.deployments)
	if err != nil {
		return err
	}
	v := keyAnswer(k)
	t := keyTarget(k)
	t.Changed = o.members()
	return s.mutated(c, http.StatusOK, k.Revision, &v, &v.Propagation, t)
}

func (s *Server) deleteKey(c *call) error {
	if err := c.readWait(); err != nil {
		return err
	}
	rev, err := s.store.deleteKey(c.ctx(), c.project.ID, c.r.PathValue("id"), c.mayActOn)
	if err != nil {
		return err
	}
	ref := c.r.PathValue("id")
	return s.mutated(c, http.StatusNoContent, rev, nil, nil, auditTarget{Target: ref, KeyID: ref})
}

func (s *Server) rotateKey(c *call) error {
	o, err := readObject(c.r, true, "grace_seconds")
	if err != nil {
		return err
	}
	grace, err := decodeRotate(o)
	if err != nil {
		return err
	}
	if err := c.readWait(); err != nil {
		return err
	}
	secret, h, err := newSecret()
	if err != nil {
		return err
	}
	k, err := s.store.rotateKey(c.ctx(), c.project.ID, c.r.PathValue("id"), h, apikey.Display(secret), grace, c.mayActOn)
	if err != nil {
		return err
	}
	v := keyAnswer(k)
	v.Secret = secret
	return s.mutated(c, http.StatusOK, k.Revision, &v, &v.Propagation, keyTarget(k))
}

// parseExpiry accepts RFC 3339 or YYYY-MM-DD (00:00 UTC that day).
func parseExpiry(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t.UTC(), nil
	}
	return time.Time{}, validation("expires_at", "must be an RFC 3339 time, a YYYY-MM-DD date, or null")
}

// newSecret makes a key's secret and the hash the store keeps of it.
func newSecret() (string, apikey.Hash, error) {
	secret, err := apikey.Generate()
	if err != nil {
		return "", apikey.Hash{}, err
	}
	h, err := apikey.ParseString(secret)
	return secret, h, err
}
