package origin

// Prices and spend caps in the API (issue 15): a deployment's "pricing" and
// the "max_budget" / "budget_refill" of keys, deployments and projects.
// Amounts are JSON numbers in units of the currency, read exactly (as
// decimals, never through a float) into the integer nano-units the events
// and the ledger carry (event.NanosPerUnit), and shown back the same way.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"regexp"
	"strconv"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
)

// budgetFields are the spend cap members of a key, deployment or project
// body (part of tokensFields).
var budgetFields = []string{"max_budget", "budget_refill"}

// pricingDecimals is the most decimals a price per million tokens may
// have (nano-units); budgetDecimals a max_budget's (micro-units).
const (
	pricingDecimals = 9
	budgetDecimals  = 6
)

var currencyRE = regexp.MustCompile(`^[A-Z]{3}$`)

// decimalNanos reads raw, a JSON number of at most decimals decimals in
// [0, limit], as nano-units. what describes the value for the error.
func decimalNanos(field string, raw json.RawMessage, decimals int, limit int64, what string) (int64, error) {
	bad := validation(field, fmt.Sprintf("must be %s: a number between 0 and %d with at most %d decimals", what, limit, decimals))
	s := string(bytes.TrimSpace(raw))
	if s == "" || len(s) > 64 || s[0] == '"' || !json.Valid([]byte(s)) {
		return 0, bad
	}
	// The float reading bounds the value (and refuses 1e999) before the
	// exact reading, whose cost grows with the exponent.
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > float64(limit) {
		return 0, bad
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok || r.Sign() < 0 || r.Cmp(new(big.Rat).SetInt64(limit)) > 0 {
		return 0, bad
	}
	scaled := new(big.Rat).Mul(r, new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(decimals)), nil)))
	if !scaled.IsInt() {
		return 0, bad
	}
	n := scaled.Num().Int64()
	for i := decimals; i < 9; i++ {
		n *= 10
	}
	return n, nil
}

// nanosNumber is n nano-units as a JSON number of units, exact ("0.5",
// "12", "0.000000001").
func nanosNumber(n int64) json.Number { return json.Number(event.FormatNanos(n)) }

// decodeBudget reads max_budget (0 to maxBudget with at most 6 decimals,
// or null: no cap) and budget_refill ("daily", "monthly" or null: never)
// into ch. budget_refill is given with max_budget (a PATCH giving only
// max_budget keeps the refill).
func decodeBudget(o object, ch *tokensChange) error {
	raw, present := o["max_budget"]
	rawRefill, refillPresent := o["budget_refill"]
	if refillPresent && !present {
		return validation("budget_refill", "is given together with max_budget")
	}
	if !present {
		return nil
	}
	ch.budgetSet = true
	if isNull(raw) {
		if refillPresent && !isNull(rawRefill) {
			return validation("budget_refill", "a budget_refill needs a max_budget (null removes the cap)")
		}
		return nil
	}
	n, err := decimalNanos("max_budget", raw, budgetDecimals, maxBudget, "an amount of the deployments' pricing currency")
	if err != nil {
		return err
	}
	ch.budget = &event.Budget{MaxNanos: n}
	if refillPresent {
		ch.refillSet = true
		var refill *string
		if err := json.Unmarshal(rawRefill, &refill); err != nil || refill != nil && *refill != event.QuotaRefillDaily && *refill != event.QuotaRefillMonthly {
			return validation("budget_refill", `must be "daily", "monthly" or null (never refilled)`)
		}
		if refill != nil {
			ch.budget.Refill = *refill
		}
	}
	return nil
}

// applyBudget makes ch's budget change to out.
func (ch *tokensChange) applyBudget(out *event.TokenLimits) {
	if !ch.budgetSet {
		return
	}
	if ch.budget == nil {
		out.Budget = nil
		return
	}
	b := *ch.budget
	if !ch.refillSet && out.Budget != nil {
		b.Refill = out.Budget.Refill
	}
	out.Budget = &b
}

// budgetAnswer is t's spend cap as the API shows it: nulls for none.
func budgetAnswer(t *event.TokenLimits) (maxBudget *json.Number, refill *string) {
	if t == nil || t.Budget == nil {
		return nil, nil
	}
	n := nanosNumber(t.Budget.MaxNanos)
	if t.Budget.Refill != "" {
		r := t.Budget.Refill
		refill = &r
	}
	return &n, refill
}

// decodePricing reads a deployment's "pricing": {"currency": "USD",
// "prompt_per_million": 0.5, "completion_per_million": 1.5,
// "cached_per_million": 0.25 (optional, null: as prompt)}, or null (none).
func decodePricing(o object) (present bool, p *event.Pricing, err error) {
	var in struct {
		Currency             *string         `json:"currency"`
		PromptPerMillion     json.RawMessage `json:"prompt_per_million"`
		CompletionPerMillion json.RawMessage `json:"completion_per_million"`
		CachedPerMillion     json.RawMessage `json:"cached_per_million"`
	}
	present, null, err := o.get("pricing", &in, true,
		`{"currency": "USD", "prompt_per_million": N, "completion_per_million": N, "cached_per_million": N (optional)}, or null`)
	if err != nil || !present || null {
		return present, nil, err
	}
	if in.Currency == nil || !currencyRE.MatchString(*in.Currency) {
		return true, nil, validation("pricing", `currency must be an ISO 4217 code of 3 capital letters, e.g. "USD"`)
	}
	p = &event.Pricing{Currency: *in.Currency}
	for _, f := range []struct {
		name     string
		raw      json.RawMessage
		dst      *int64
		optional bool
	}{{"prompt_per_million", in.PromptPerMillion, &p.Prompt, false}, {"completion_per_million", in.CompletionPerMillion, &p.Completion, false},
		{"cached_per_million", in.CachedPerMillion, nil, true}} {
		if len(f.raw) == 0 || isNull(f.raw) {
			if f.optional {
				continue
			}
			return true, nil, validation("pricing", f.name+" is required")
		}
		n, err := decimalNanos("pricing", f.raw, pricingDecimals, maxPricePerMillion, f.name+" (the price of a million tokens)")
		if err != nil {
			return true, nil, err
		}
		if f.dst == nil {
			p.Cached = &n
		} else {
			*f.dst = n
		}
	}
	return true, p, nil
}

// pricingAnswer is p as the API shows it (nil: none).
func pricingAnswer(p *event.Pricing) *api.Pricing {
	if p == nil {
		return nil
	}
	out := &api.Pricing{Currency: p.Currency, PromptPerMillion: nanosNumber(p.Prompt), CompletionPerMillion: nanosNumber(p.Completion)}
	if p.Cached != nil {
		n := nanosNumber(*p.Cached)
		out.CachedPerMillion = &n
	}
	return out
}
