package event

// Prices and spend caps (issue 15). Amounts are integers of nano-units of a
// currency (1 USD = 1,000,000,000 nano-USD), never floats: what an edge
// reserves, what it settles and what the origin's ledger sums are exact and
// the same everywhere, however many requests are added up.

import (
	"math"
	"math/bits"
	"strconv"
	"strings"
)

// NanosPerUnit is how many nano-units make one unit of a currency.
const NanosPerUnit = 1_000_000_000

// Pricing is what a deployment's tokens cost: nano-units of Currency (an
// ISO 4217 code, e.g. "USD") per million tokens. Cached, when set, prices
// the prompt tokens the upstream served from its cache (a part of the
// prompt tokens); nil prices them as any prompt token.
type Pricing struct {
	Currency   string `json:"currency"`
	Prompt     int64  `json:"prompt_nanos_per_million"`
	Completion int64  `json:"completion_nanos_per_million"`
	Cached     *int64 `json:"cached_nanos_per_million,omitempty"`
}

// Cost is what prompt tokens (cached of them from the upstream's cache)
// and completion tokens cost, in nano-units, rounded up to a whole
// nano-unit: a priced request never costs nothing. A nil Pricing costs 0;
// negative counts count as 0, a cached count above prompt as prompt, and a
// sum past the int64 range saturates.
func (p *Pricing) Cost(prompt, completion, cached int64) int64 {
	if p == nil {
		return 0
	}
	prompt, completion = max(prompt, 0), max(completion, 0)
	cached = min(max(cached, 0), prompt)
	cachedPrice := p.Prompt
	if p.Cached != nil {
		cachedPrice = *p.Cached
	}
	var hi, lo uint64
	for _, t := range [...][2]int64{{prompt - cached, p.Prompt}, {cached, cachedPrice}, {completion, p.Completion}} {
		h, l := bits.Mul64(uint64(t[0]), uint64(max(t[1], 0)))
		var carry uint64
		lo, carry = bits.Add64(lo, l, 0)
		hi += h + carry
	}
	const perMillion = 1_000_000
	if hi >= perMillion { // the quotient would not fit 64 bits
		return math.MaxInt64
	}
	q, r := bits.Div64(hi, lo, perMillion)
	if r > 0 {
		q++
	}
	if q > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(q)
}

// Budget is a spend cap: at most MaxNanos nano-units of spend, at the
// prices of the deployments the requests went to, refilled at each start
// of a UTC day or month (QuotaRefillDaily, QuotaRefillMonthly) or never
// (""). A budget counts in the currency its deployments price in: the
// deployments a key, deployment or project spends on are meant to share
// one currency (docs/api.md).
type Budget struct {
	MaxNanos int64  `json:"max_nanos"`
	Refill   string `json:"refill,omitempty"`
}

// FormatNanos writes n nano-units as a decimal number of units, exact and
// without trailing zeros ("0.5", "12", "0.000000001"): what the APIs show.
func FormatNanos(n int64) string {
	var u uint64
	sign := ""
	if n < 0 {
		sign, u = "-", uint64(-(n+1))+1
	} else {
		u = uint64(n)
	}
	s := strconv.FormatUint(u/NanosPerUnit, 10)
	if frac := u % NanosPerUnit; frac > 0 {
		f := strconv.FormatUint(frac+NanosPerUnit, 10)[1:] // 9 digits
		s += "." + strings.TrimRight(f, "0")
	}
	return sign + s
}
