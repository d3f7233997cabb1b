package opcli

import (
	"encoding/json"
	"flag"
	"fmt"
	"strconv"
	"strings"

	"github.com/keymesh/keymesh/origin/apiclient"
)

// tokenFlags are the token bound flags of keys, deployments and projects
// (create and update). On an update 0 removes a bound, as
// --max-concurrency 0 removes the cap.
type tokenFlags struct {
	fs                         *flag.FlagSet
	perMinute, perDay          *int64
	quotaTokens, quotaRequests *int64
	quotaRefill                *string
	defaultMaxTokens           *int64 // deployments only
	maxBudget, budgetRefill    *string
	pricing                    *string // deployments only
	create                     bool
}

func defineTokenFlags(fs *flag.FlagSet, create, deployment bool, of string) *tokenFlags {
	t := &tokenFlags{fs: fs, create: create}
	removes := map[bool]string{true: " (default: no bound)", false: " (0 removes the bound)"}[create]
	t.perMinute = fs.Int64("tokens-per-minute", 0, "tokens (prompt plus completion) "+of+" may use per minute, at each edge"+removes)
	t.perDay = fs.Int64("tokens-per-day", 0, "tokens "+of+" may use per day, at each edge"+removes)
	t.quotaTokens = fs.Int64("quota-tokens", 0, "a quota of this many tokens"+map[bool]string{true: "", false: "; replaces the quota (0 removes it)"}[create])
	t.quotaRequests = fs.Int64("quota-requests", 0, "a quota of this many requests (instead of --quota-tokens)"+map[bool]string{true: "", false: " (0 removes the quota)"}[create])
	t.quotaRefill = fs.String("quota-refill", "", `when the quota is full again: daily (00:00 UTC), monthly (the 1st) or never (default never)`)
	t.maxBudget = fs.String("max-budget", "", "spend cap of "+of+", in units of the deployments' pricing currency (e.g. 25.50), at most 6 decimals"+
		map[bool]string{true: " (default: no cap)", false: ` ("none" removes the cap)`}[create])
	t.budgetRefill = fs.String("budget-refill", "", `when the spend cap is full again: daily (00:00 UTC), monthly (the 1st) or never (default never); given with --max-budget`)
	if deployment {
		t.pricing = fs.String("pricing", "", `what the deployment's tokens cost, as JSON: {"currency":"USD","prompt_per_million":0.5,"completion_per_million":1.5,"cached_per_million":0.25} (cached optional)`+
			map[bool]string{true: "", false: ` ("none" removes it)`}[create])
		t.defaultMaxTokens = fs.Int64("default-max-tokens", 0, "completion tokens a request naming no max_tokens reserves against token bounds"+
			map[bool]string{true: " (default: none)", false: " (0: none)"}[create])
	}
	return t
}

// changes reports whether any token flag was given.
func (t *tokenFlags) changes() bool {
	n := false
	t.fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "tokens-per-minute", "tokens-per-day", "quota-tokens", "quota-requests", "quota-refill", "default-max-tokens", "max-budget", "budget-refill", "pricing":
			n = true
		}
	})
	return n
}

// limits is the update the flags given ask for.
func (t *tokenFlags) limits() (apiclient.TokenLimits, error) {
	var out apiclient.TokenLimits
	if err := t.budget(&out); err != nil {
		return out, err
	}
	for _, f := range []struct {
		name string
		v    *int64
		dst  **int64
	}{{"tokens-per-minute", t.perMinute, &out.TokensPerMinute}, {"tokens-per-day", t.perDay, &out.TokensPerDay}} {
		if !isSet(t.fs, f.name) {
			continue
		}
		if *f.v < 0 || *f.v == 0 && t.create {
			return out, badInput("--%s must be positive", f.name)
		}
		*f.dst = ptr(*f.v)
	}
	tok, req, refill := isSet(t.fs, "quota-tokens"), isSet(t.fs, "quota-requests"), isSet(t.fs, "quota-refill")
	switch {
	case tok && req:
		return out, badInput("give --quota-tokens or --quota-requests, not both")
	case refill && !tok && !req:
		return out, badInput("--quota-refill needs --quota-tokens or --quota-requests (the quota is set whole)")
	case !tok && !req:
		return out, nil
	}
	amount, name := *t.quotaTokens, "quota-tokens"
	if req {
		amount, name = *t.quotaRequests, "quota-requests"
	}
	if amount < 0 || amount == 0 && t.create {
		return out, badInput("--%s must be positive", name)
	}
	if amount == 0 {
		if refill {
			return out, badInput("--%s 0 removes the quota: give no --quota-refill with it", name)
		}
		out.NoQuota = true
		return out, nil
	}
	q := &apiclient.Quota{}
	if tok {
		q.Tokens = ptr(amount)
	} else {
		q.Requests = ptr(amount)
	}
	switch *t.quotaRefill {
	case "", "never":
	case "daily", "monthly":
		q.Refill = ptr(*t.quotaRefill)
	default:
		return out, badInput(`--quota-refill must be daily, monthly or never`)
	}
	out.Quota = q
	return out, nil
}

// budget reads --max-budget and --budget-refill into out. The amount is
// sent as written (the origin reads it exactly); only its form is checked
// here.
func (t *tokenFlags) budget(out *apiclient.TokenLimits) error {
	amount, refill := isSet(t.fs, "max-budget"), isSet(t.fs, "budget-refill")
	if refill && !amount {
		return badInput("--budget-refill needs --max-budget (the cap is set whole)")
	}
	if !amount {
		return nil
	}
	if *t.maxBudget == "none" {
		if t.create {
			return badInput(`--max-budget none: give no --max-budget for no cap`)
		}
		if refill {
			return badInput("--max-budget none removes the cap: give no --budget-refill with it")
		}
		out.NoBudget = true
		return nil
	}
	if f, err := strconv.ParseFloat(*t.maxBudget, 64); err != nil || f < 0 || strings.ContainsAny(*t.maxBudget, "xXpP_") {
		return badInput("--max-budget must be an amount such as 25 or 0.50")
	}
	n := json.Number(*t.maxBudget)
	out.MaxBudget = &n
	if refill {
		switch *t.budgetRefill {
		case "never":
			out.BudgetRefill = ptr("")
		case "daily", "monthly":
			out.BudgetRefill = ptr(*t.budgetRefill)
		default:
			return badInput(`--budget-refill must be daily, monthly or never`)
		}
	}
	return nil
}

// pricingFlag is --pricing as the update sends it: nil and false when not
// given; none true for "none" on an update.
func (t *tokenFlags) pricingFlag() (p *apiclient.Pricing, none bool, err error) {
	if t.pricing == nil || !isSet(t.fs, "pricing") {
		return nil, false, nil
	}
	if *t.pricing == "none" && !t.create {
		return nil, true, nil
	}
	dec := json.NewDecoder(strings.NewReader(*t.pricing))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	var in apiclient.Pricing
	if err := dec.Decode(&in); err != nil {
		return nil, false, badInput(`--pricing must be JSON such as {"currency":"USD","prompt_per_million":0.5,"completion_per_million":1.5}: %v`, err)
	}
	return &in, false, nil
}

// fmtPricing shows a deployment's pricing.
func fmtPricing(p *apiclient.Pricing) string {
	if p == nil {
		return "none"
	}
	s := fmt.Sprintf("%s %s prompt, %s completion", p.Currency, p.PromptPerMillion, p.CompletionPerMillion)
	if p.CachedPerMillion != nil {
		s += fmt.Sprintf(", %s cached", *p.CachedPerMillion)
	}
	return s + " per million tokens"
}

// fmtBudget shows a spend cap.
func fmtBudget(max *json.Number, refill *string) string {
	if max == nil {
		return "no cap"
	}
	if refill != nil {
		return max.String() + ", refilled " + *refill
	}
	return max.String() + ", never refilled"
}

// defaultMax is --default-max-tokens as the update sends it (nil: not
// given; 0: none).
func (t *tokenFlags) defaultMax() (*int64, error) {
	if t.defaultMaxTokens == nil || !isSet(t.fs, "default-max-tokens") {
		return nil, nil
	}
	if *t.defaultMaxTokens < 0 || *t.defaultMaxTokens == 0 && t.create {
		return nil, badInput("--default-max-tokens must be positive")
	}
	return ptr(*t.defaultMaxTokens), nil
}

// fmtTokens shows a per-period token bound (per edge in this release).
func fmtTokens(n *int64, per string) string {
	if n == nil {
		return "no bound"
	}
	return strconv.FormatInt(*n, 10) + " per " + per + " per edge"
}

// fmtQuota shows a quota.
func fmtQuota(q *apiclient.Quota) string {
	if q == nil {
		return "none"
	}
	s := ""
	if q.Requests != nil {
		s = strconv.FormatInt(*q.Requests, 10) + " requests"
	} else if q.Tokens != nil {
		s = strconv.FormatInt(*q.Tokens, 10) + " tokens"
	}
	if q.Refill != nil {
		return s + ", refilled " + *q.Refill
	}
	return s + ", never refilled"
}

// fmtTokenLimits shows all of a resource's token bounds in one table cell.
func fmtTokenLimits(perMinute, perDay *int64, q *apiclient.Quota) string {
	var parts []string
	if perMinute != nil {
		parts = append(parts, strconv.FormatInt(*perMinute, 10)+"/min")
	}
	if perDay != nil {
		parts = append(parts, strconv.FormatInt(*perDay, 10)+"/day")
	}
	if q != nil {
		parts = append(parts, "quota "+fmtQuota(q))
	}
	return strings.Join(parts, "; ")
}

// withBudget adds a spend cap to a fmtTokenLimits cell.
func withBudget(cell string, max *json.Number) string {
	if max == nil {
		return cell
	}
	if cell != "" {
		cell += "; "
	}
	return cell + "budget " + max.String()
}
