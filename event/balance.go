package event

import (
	"fmt"
	"time"
)

// Balances: the origin's usage ledger, the durable record of what every
// key, deployment and project has used, tells the edges in signed
// KindBalance records how much of each long-period bound (tokens per day,
// quotas, budgets) is used up in the current period. An edge takes a
// counter's figure as a floor for its own estimate: the largest of the
// signed figure and what the edges report. The figure only grows within a
// period (usage is only ever added to the ledger), so a lost, repeated,
// reordered or stale record only makes the floor lower than it could be,
// never a grant; an edge that lost its counters (a restart) learns from the
// next one what the period has already spent.

// A balance names its counter as limit reports do (LimitScope,
// LimitKind): tpd is the tokens (prompt plus completion, as metered) of
// the UTC day Period (unix seconds / 86400); quota_tokens and
// quota_requests the tokens or metered requests of the quota's refill
// period Period (the unix day for a daily quota, year*12+month for a
// monthly one, 0 for one that never refills: all time); budget the spend
// (nano-units of the currency) of the budget's period, numbered as a
// quota's. rpm and tpm are never balances: a minute is over before the
// ledger would know it.

// MaxBalancesPerRecord bounds the balances of one KindBalance record (the
// origin sends more as several records, each well under NATS
// max_payload); an edge refuses a record with more.
const MaxBalancesPerRecord = 512

//

// Balance is what the ledger says one counter has used in one period, as
// of AsOf.
type Balance struct {
	Scope  LimitScope `json:"scope"`
	ID     string     `json:"id"`
	Kind   LimitKind  `json:"kind"`
	Period int64      `json:"period"`
	Used   int64      `json:"used"`
	AsOf   time.Time  `json:"as_of"`
}

// Check reports whether b is well formed: a known scope and kind, an id,
// a period and a count that are not negative.
func (b *Balance) Check() error {
	if !b.Scope.Valid() {
		return fmt.Errorf("%w: balance scope %q", ErrMalformed, b.Scope)
	}
	switch b.Kind {
	case LimitTPD, LimitQuotaTokens, LimitQuotaRequests, LimitBudget:
	default:
		return fmt.Errorf("%w: balance kind %q", ErrMalformed, b.Kind)
	}
	if b.ID == "" || len(b.ID) > MaxLimitIDBytes || b.Period < 0 || b.Used < 0 {
		return fmt.Errorf("%w: balance id, period or count", ErrMalformed)
	}
	return nil
}

// CheckBalances reports whether r is a well-formed KindBalance record:
// 1 to MaxBalancesPerRecord balances, each well formed.
func CheckBalances(r *Record) error {
	if r.Kind != KindBalance {
		return fmt.Errorf("%w: kind %q is not %q", ErrMalformed, r.Kind, KindBalance)
	}
	if len(r.Balances) == 0 || len(r.Balances) > MaxBalancesPerRecord {
		return fmt.Errorf("%w: %d balances (want 1 to %d)", ErrMalformed, len(r.Balances), MaxBalancesPerRecord)
	}
	for i := range r.Balances {
		if err := r.Balances[i].Check(); err != nil {
			return err
		}
	}
	return nil
}

// QuotaPeriod numbers the refill period now falls in, as a Balance's
// Period does — the unix day (UTC) for QuotaRefillDaily, year*12+month for
// QuotaRefillMonthly, 0 for a quota that never refills — and gives when
// the period started and when the next one starts (zero times for never).
// The edges and the origin both number periods with it: a floor is applied
// only to the period it names.
func QuotaPeriod(refill string, now time.Time) (period int64, start, next time.Time) {
	now = now.UTC()
	switch refill {
	case QuotaRefillDaily:
		y, m, d := now.Date()
		start = time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
		return start.Unix() / 86400, start, start.AddDate(0, 0, 1)
	case QuotaRefillMonthly:
		y, m, _ := now.Date()
		start = time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
		return int64(y)*12 + int64(m), start, start.AddDate(0, 1, 0)
	}
	return 0, time.Time{}, time.Time{}
}
