package proxy

// Spend caps (issue 15): the budget counter kind of the token table
// (tokens.go). A key, a deployment and a project may carry a max_budget
// (event.Budget, nano-units of the currency), refilled daily, monthly or
// never like a quota; what a request spends is its cost at the pricing of
// the deployment it went to (event.Pricing.Cost).
//
//   - Admission reserves the request's most likely cost: its prompt tokens
//     estimated from the body's prompt characters (as the meter estimates a
//     cut stream: charsPerToken) at the prompt price, plus its reservation
//     of completion tokens (max_tokens, else default_max_tokens) at the
//     completion price. Every budget that applies must have max(cost, 1)
//     nano-units left; refused: 429 INSUFFICIENT_QUOTA (type
//     insufficient_quota, OpenAI's out-of-credit error) with Retry-After
//     until the refill, or X-Should-Retry: false when it never refills or
//     the request costs more than the whole budget.
//   - Settlement replaces the reservation by the metered cost (prompt,
//     completion and cached tokens, estimated ones included); a request the
//     upstream never answered, or that was refused, spends nothing.
//
// A deployment without pricing costs nothing: its requests take nothing
// from any budget (and a budget never refuses them).

import (
	"net/http"
	"time"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

var (
	errBudget = apierror.New(http.StatusTooManyRequests, apierror.InsufficientQuota,
		"spend cap (max_budget) of this API key, deployment or project reached; it refills at the time in Retry-After, if any")
	// errBudgetTooLarge refuses a request whose reservation costs more than
	// a whole budget: no wait makes it admissible.
	errBudgetTooLarge = apierror.New(http.StatusTooManyRequests, apierror.InsufficientQuota,
		"this request's reservation (its prompt and max_tokens at the deployment's pricing) costs more than the whole max_budget of this API key, deployment or project; lower max_tokens")
)

func init() {
	for _, e := range []*apierror.Error{errBudget, errBudgetTooLarge} {
		rendered[e] = e.Body()
	}
}

// reservedCost is what admission reserves of the budgets for a request on
// dep with promptChars prompt characters and res completion tokens
// reserved: 0 when dep is unpriced.
func reservedCost(dep *event.Deployment, promptChars int, res int64) int64 {
	if dep.Pricing == nil {
		return 0
	}
	prompt := int64((max(promptChars, 0) + charsPerToken - 1) / charsPerToken)
	return dep.Pricing.Cost(prompt, res, 0)
}

// meteredCost is what a finished request on dep spent: its metered
// tokens at dep's pricing; nothing when the upstream never answered.
func meteredCost(dep *event.Deployment, u *usageCounts) int64 {
	if dep == nil || !u.ok {
		return 0
	}
	return dep.Pricing.Cost(u.prompt, u.completion, u.cached)
}

// giveBudget settles one budget reservation r of c by spent nano-units
// (0 when cancelled). The caller holds the counter's shard.
func (c *tokenCounter) giveBudget(r *tokenRef, spent int64, now time.Time) {
	c.refillQuota(c.limit, c.refill, now)
	if c.period == r.period {
		c.used = max(0, c.used+spent-r.took)
	} else {
		c.used += spent // the period the reservation was in is over
	}
}
