package origin

// Checks shared by the resources' validators (each resource's own are next
// to its handlers, in api_*.go).

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/modelglob"
)

var (
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	hostRE = regexp.MustCompile(`^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?$`)
	siteRE = regexp.MustCompile(`^(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,62})$`)
	// secretNameRE: runs of letters and digits joined by single '.', '_'
	// or '-'. So a name can hold no path separator, no "." or ".." and no
	// "__" — the separator of an edge's EDGE_SECRET_<PROJECT>__<NAME> — and
	// can never name another project's secret on an edge, which resolves it
	// under the deployment's own project (<secrets-dir>/<project>/<name>).
	secretNameRE = regexp.MustCompile(`^[A-Za-z0-9]+([._-][A-Za-z0-9]+)*$`)
	headerRE     = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
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

// validRateLimit checks a key's or deployment's rate_limit (nil: none).
func validRateLimit(rl *event.RateLimit) error {
	if rl != nil && (rl.RequestsPerMinute < 1 || rl.RequestsPerMinute > maxRequestsPerMin) {
		return validation("rate_limit", fmt.Sprintf("requests_per_minute must be between 1 and %d", maxRequestsPerMin))
	}
	return nil
}

// decodeModels reads and checks a key's or deployment's "models": a list
// of at most modelglob.MaxPatterns patterns (modelglob.Valid), duplicates
// dropped, in the order given; [] and null mean any model (nil).
func decodeModels(o object) (present bool, models []string, err error) {
	var list []string
	present, null, err := o.get("models", &list, true, `a list of model name patterns, or null`)
	if err != nil || !present || null {
		return present, nil, err
	}
	if len(list) > modelglob.MaxPatterns {
		return true, nil, validation("models", fmt.Sprintf("at most %d patterns", modelglob.MaxPatterns))
	}
	seen := map[string]bool{}
	for _, p := range list {
		if err := modelglob.Valid(p); err != nil {
			return true, nil, validation("models", fmt.Sprintf("%q: %s (a pattern is 1-%d bytes without spaces or control characters; '*' is the only wildcard)",
				truncate(p, 80), strings.TrimPrefix(err.Error(), modelglob.ErrPattern.Error()+": "), modelglob.MaxPatternLen))
		}
		if !seen[p] {
			seen[p] = true
			models = append(models, p)
		}
	}
	return true, models, nil
}

// decodeConcurrency reads and checks "max_concurrency": 1 to
// maxConcurrency, or null for no cap (0).
func decodeConcurrency(o object) (present bool, n int, err error) {
	present, null, err := o.get("max_concurrency", &n, true, "a whole number of requests, or null")
	if err != nil || !present || null {
		return present, 0, err
	}
	if n < 1 || n > maxConcurrency {
		return true, 0, validation("max_concurrency", fmt.Sprintf("must be between 1 and %d, or null for no cap", maxConcurrency))
	}
	return true, n, nil
}

// tokensFields are the members of a key, deployment or project body that
// set its token bounds.
var tokensFields = append([]string{"tokens_per_minute", "tokens_per_day", "quota"}, budgetFields...)

// tokensChange is a decoded change of token bounds; a member not set is
// left as it is, a set one with a zero value (null) removes the bound.
type tokensChange struct {
	perMinuteSet, perDaySet, quotaSet bool
	perMinute, perDay                 int64
	quota                             *event.Quota
	// budgetSet: max_budget was given (budget nil: null, the cap removed);
	// refillSet: budget_refill too (else a PATCH keeps the refill).
	budgetSet, refillSet bool
	budget               *event.Budget
}

// touches reports whether the change touches any bound.
func (ch *tokensChange) touches() bool {
	return ch.perMinuteSet || ch.perDaySet || ch.quotaSet || ch.budgetSet
}

// apply returns t with the change made, nil when it bounds nothing (so
// that a record without bounds carries none). t is not modified.
func (ch *tokensChange) apply(t *event.TokenLimits) *event.TokenLimits {
	var out event.TokenLimits
	if t != nil {
		out = *t
	}
	if ch.perMinuteSet {
		out.TokensPerMinute = ch.perMinute
	}
	if ch.perDaySet {
		out.TokensPerDay = ch.perDay
	}
	if ch.quotaSet {
		out.Quota = ch.quota
	}
	ch.applyBudget(&out)
	if out.Empty() {
		return nil
	}
	return &out
}

// decodeTokens reads and checks tokens_per_minute, tokens_per_day (1 to
// maxTokensPerPeriod, or null) and quota ({"tokens": N} or {"requests": N},
// 1 to maxQuotaAmount, with "refill" "daily", "monthly" or null; or null).
func decodeTokens(o object) (tokensChange, error) {
	var ch tokensChange
	if err := decodeBudget(o, &ch); err != nil {
		return ch, err
	}
	for _, f := range []struct {
		name string
		set  *bool
		n    *int64
	}{{"tokens_per_minute", &ch.perMinuteSet, &ch.perMinute}, {"tokens_per_day", &ch.perDaySet, &ch.perDay}} {
		present, null, err := o.get(f.name, f.n, true, "a whole number of tokens, or null for no bound")
		if err != nil {
			return ch, err
		}
		*f.set = present
		if present && !null && (*f.n < 1 || *f.n > maxTokensPerPeriod) {
			return ch, validation(f.name, fmt.Sprintf("must be between 1 and %d, or null for no bound", int64(maxTokensPerPeriod)))
		}
	}
	var q struct {
		Tokens   *int64  `json:"tokens"`
		Requests *int64  `json:"requests"`
		Refill   *string `json:"refill"`
	}
	present, null, err := o.get("quota", &q, true, `{"tokens": N} or {"requests": N} with an optional "refill", or null`)
	if err != nil || !present {
		return ch, err
	}
	ch.quotaSet = true
	if null {
		return ch, nil
	}
	if (q.Tokens == nil) == (q.Requests == nil) {
		return ch, validation("quota", `must give exactly one of "tokens" and "requests"`)
	}
	eq := &event.Quota{}
	amount, unit := q.Tokens, "tokens"
	if q.Requests != nil {
		amount, unit = q.Requests, "requests"
	}
	if *amount < 1 || *amount > maxQuotaAmount {
		return ch, validation("quota", fmt.Sprintf("%s must be between 1 and %d", unit, int64(maxQuotaAmount)))
	}
	if q.Tokens != nil {
		eq.Tokens = *q.Tokens
	} else {
		eq.Requests = *q.Requests
	}
	if q.Refill != nil {
		if *q.Refill != event.QuotaRefillDaily && *q.Refill != event.QuotaRefillMonthly {
			return ch, validation("quota", `refill must be "daily", "monthly" or null (never refilled)`)
		}
		eq.Refill = *q.Refill
	}
	ch.quota = eq
	return ch, nil
}

// decodeDefaultMaxTokens reads and checks a deployment's
// "default_max_tokens": 1 to maxDefaultMaxToks, or null for none (0).
func decodeDefaultMaxTokens(o object) (present bool, n int64, err error) {
	present, null, err := o.get("default_max_tokens", &n, true, "a whole number of tokens, or null")
	if err != nil || !present || null {
		return present, 0, err
	}
	if n < 1 || n > maxDefaultMaxToks {
		return true, 0, validation("default_max_tokens", fmt.Sprintf("must be between 1 and %d, or null for none", maxDefaultMaxToks))
	}
	return true, n, nil
}

// tokensAnswer is t as the API shows it: null for each bound not set.
func tokensAnswer(t *event.TokenLimits) (perMinute, perDay *int64, quota *api.Quota) {
	if t == nil {
		return nil, nil, nil
	}
	if t.TokensPerMinute > 0 {
		perMinute = &t.TokensPerMinute
	}
	if t.TokensPerDay > 0 {
		perDay = &t.TokensPerDay
	}
	return perMinute, perDay, quotaAnswer(t.Quota)
}

// quotaAnswer is q as the API shows it (nil: no quota).
func quotaAnswer(q *event.Quota) *api.Quota {
	if q == nil {
		return nil
	}
	out := &api.Quota{}
	if q.Requests > 0 {
		n := q.Requests
		out.Requests = &n
	} else {
		n := q.Tokens
		out.Tokens = &n
	}
	if q.Refill != "" {
		r := q.Refill
		out.Refill = &r
	}
	return out
}

// int64Answer is n as the API shows it: null for 0 (none).
func int64Answer(n int64) *int64 {
	if n <= 0 {
		return nil
	}
	return &n
}

// modelsAnswer is a model list as the API shows it: [] for any model.
func modelsAnswer(m []string) []string {
	if m == nil {
		return []string{}
	}
	return m
}

// concurrencyAnswer is a concurrency cap as the API shows it: null for
// none.
func concurrencyAnswer(n int) *int {
	if n <= 0 {
		return nil
	}
	return &n
}

// validation is the error of one field's value (a 400 naming the field).
func validation(field, msg string) error { return &FieldError{Field: field, Message: msg} }
