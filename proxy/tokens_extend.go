package proxy

import (
	"time"

	"github.com/keymesh/keymesh/internal/apierror"
)

// extend takes n more tokens from every counter hold h took tokens from —
// its buckets and token quotas; a request quota does not grow — and what n
// completion tokens cost at the hold's pricing from every budget it took
// from, or from none, each checked as at admission (check: the bound must
// have that much left). When refused, the reason names the kind of bound
// that refused (reasonTokenLimit, or reasonQuota for a quota and a
// budget). A counter the table could not keep (untracked at admission) is
// not extended: it was checked as full, and nothing of it is held. h is
// the caller's alone (one request's), as at settlement. The refusal is
// returned too: errBudget says a spend cap refused (its cut event says so).
func (t *tokenTable) extend(h *tokenHold, n int64) (reason, *apierror.Error, bool) {
	if n <= 0 {
		return reasonNone, nil, true
	}
	now := t.now()
	cost := h.pricing.Cost(0, n, 0) // 0 unpriced: no budget grows
	var out tokenResult
	for i := range h.refs[:h.n] {
		r := &h.refs[i]
		amount := extension(r, n, cost)
		if amount == 0 {
			continue
		}
		if !t.extendRef(r, amount, now, &out) {
			for j := range h.refs[:i] {
				o := &h.refs[j]
				if a := extension(o, n, cost); a > 0 {
					t.unextendRef(o, a)
				}
			}
			return out.reason, out.refusal, false
		}
	}
	h.covered += n
	return reasonNone, nil, true
}

// extension is what an extension by n tokens costing cost nano-units
// takes from r's counter: n from a kept counter of tokens, cost from a
// budget, nothing from a request quota or a counter not kept.
func extension(r *tokenRef, n, cost int64) int64 {
	switch {
	case r.c == nil:
		return 0
	case r.kind == tokMinute || r.kind == tokDay || r.kind == tokQuota:
		return n
	case r.kind == tokBudget:
		return cost
	}
	return 0
}

// extendRef takes n more (tokens, or nano-units of a budget) from the
// counter of r, if it has them.
func (t *tokenTable) extendRef(r *tokenRef, n int64, now time.Time, out *tokenResult) bool {
	r.sh.mu.Lock()
	defer r.sh.mu.Unlock()
	c := r.c
	if !t.check(c, r.id, c.limit, c.refill, n, now, out) || !t.extendGlobal(r, n, now, out) {
		return false
	}
	switch r.kind {
	case tokMinute, tokDay:
		c.level -= float64(n)
	default:
		if c.period != r.period {
			// The reservation's period is over (give forgets what it
			// took there): from now the request counts in this one.
			r.period, r.took = c.period, 0
		}
		c.used += n
	}
	r.took += n
	return true
}

// extendGlobal checks n more against r's counter across edges
// (global.go), as takeGlobal does at admission, and records them held in
// the window the reservation was taken in (where settlement replaces
// what r took by what was used).
func (t *tokenTable) extendGlobal(r *tokenRef, n int64, now time.Time, out *tokenResult) bool {
	g, gr := t.global, r.g
	if g == nil || gr.c == nil {
		return true
	}
	gr.sh.mu.Lock()
	defer gr.sh.mu.Unlock()
	if res := g.check(gr.c, gr.w, n, now); !res.ok {
		switch r.kind {
		case tokQuota:
			out.refusal, out.reason = errQuota, reasonQuota
		case tokBudget:
			out.refusal, out.reason = errBudget, reasonQuota
		default:
			out.refusal, out.reason = errTokenLimit, reasonTokenLimit
		}
		return false
	}
	g.add(gr.sh, gr.c, gr.w, 0, n)
	gr.c.roundSpent += n
	return true
}

// unextendRef gives back an extension extendRef just made (across edges,
// the held tokens; what this round spent stays counted: that only
// tightens).
func (t *tokenTable) unextendRef(r *tokenRef, n int64) {
	if gr := r.g; t.global != nil && gr.c != nil {
		gr.sh.mu.Lock()
		t.global.add(gr.sh, gr.c, gr.w, 0, -n)
		gr.sh.mu.Unlock()
	}
	r.sh.mu.Lock()
	defer r.sh.mu.Unlock()
	c := r.c
	switch r.kind {
	case tokMinute, tokDay:
		c.level = min(float64(c.limit), c.level+float64(n))
	default:
		c.used = max(0, c.used-n)
	}
	r.took -= n
}
