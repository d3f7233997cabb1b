package proxy

// Token limits and quotas (issue 14). A key, a deployment and a project
// (its bounds ride on each of its deployments, counted under the
// deployment's Project id so that all its deployments share one counter)
// may each carry tokens_per_minute, tokens_per_day and a quota of tokens or
// of requests (event.TokenLimits). The counters are per edge in this
// release: N edges admit up to N times a bound.
//
//   - Reservation: a request reserves its maximum — the largest of the
//     body's max_tokens, max_completion_tokens and max_output_tokens, read
//     as the upstream would (any letter case; a value that is not a
//     non-negative integer, or a field named twice, is refused 400: the
//     edge must be sure what the upstream will see), else the deployment's
//     default_max_tokens for a POST, else 0.
//   - Admission (after the model check and the concurrency slots, before
//     the request rate limit, which gives the reservation back when it
//     refuses): every applying bound must have max(reservation, 1) tokens
//     left — buckets of capacity the bound refilled evenly over a minute or
//     a day; a token quota refilled to full at the next 00:00 UTC, the
//     next 1st of the month, or never; a request quota needs 1 and takes
//     it. One bound refusing gives back what the others took. Refused: 429
//     QUOTA_EXCEEDED (a bucket, Retry-After until it holds enough) or
//     INSUFFICIENT_QUOTA (a quota, Retry-After until it refills, none if it
//     never does).
//   - Settlement: when the request is finished (finish, once per admitted
//     request), the reservation is replaced by the metered prompt and
//     completion tokens, estimated ones included; a request the upstream
//     never answered settles 0. Settling more than was reserved leaves a
//     bucket negative: debt, paid back by its refill.
//
// The table is bounded like the request limiter's: counters idle long
// enough to be full again (and holding no reservation) are swept when a
// shard is full, and a counter that finds its shard full anyway is not
// kept (the request is checked against a full counter, admitted and counted
// in untracked). Keys and deployments without token bounds never reach this
// code, nor is their body read for it.

import (
	"bytes"
	"hash/maphash"
	"io"
	"math"
	"mime/multipart"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

// maxReservation bounds a max_tokens the edge accepts: a larger one is no
// count any server takes, and is refused as malformed.
const maxReservation = 1 << 30

var (
	errTokenLimit = apierror.New(http.StatusTooManyRequests, apierror.QuotaExceeded,
		"token rate limit exceeded (tokens_per_minute or tokens_per_day of this API key, deployment or project) for this request's max_tokens; retry after the time in Retry-After")
	errQuota = apierror.New(http.StatusTooManyRequests, apierror.InsufficientQuota,
		"quota used up for this API key, deployment or project; it refills at the time in Retry-After, if any")
	// errTokensTooLarge refuses a reservation no bucket could ever hold:
	// retrying it is pointless, and the answer says so (X-Should-Retry).
	errTokensTooLarge = apierror.New(http.StatusTooManyRequests, apierror.QuotaExceeded,
		"this request's max_tokens is more than a tokens_per_minute, tokens_per_day or token quota of this API key, deployment or project allows at all; lower max_tokens")
	errMaxTokens = apierror.New(http.StatusBadRequest, apierror.ValidationError,
		`max_tokens, max_completion_tokens and max_output_tokens must each appear at most once (any letter case), as a non-negative integer of at most 1073741824 or null`)
)

func init() {
	for _, e := range []*apierror.Error{errTokenLimit, errQuota, errTokensTooLarge, errMaxTokens} {
		rendered[e] = e.Body()
	}
}

// tokenBounded reports whether any token bound applies to a request of key
// (nil without auth) on dep.
func tokenBounded(dep *event.Deployment, key *cache.Key) bool {
	return !dep.Tokens.Empty() || !dep.ProjectTokens.Empty() || (key != nil && !key.Tokens.Empty())
}

// The fields a request names its maximum completion tokens in, lower case.
var maxTokensFields = [...]string{"max_tokens", "max_completion_tokens", "max_output_tokens"}

// maxTokens is what one reading of a body says of its maximum: the largest
// value named, whether any was, and whether the reading is ambiguous (a
// field named twice, a value that is no count).
type maxTokens struct {
	n     int64
	named bool
	bad   bool
	seen  [len(maxTokensFields)]uint8
}

// maxTokensField returns the index of the field key names (any letter
// case), or -1.
func maxTokensField(key []byte) int {
	if len(key) < len("max_tokens") || (key[0]|0x20) != 'm' {
		return -1
	}
	for i, f := range maxTokensFields {
		if len(key) == len(f) && bytes.EqualFold(key, []byte(f)) {
			return i
		}
	}
	return -1
}

// json takes a JSON value of field f: an integer in [0, maxReservation], or
// null (not given).
func (m *maxTokens) json(f int, v *fastjson.Value) {
	if m.seen[f]++; m.seen[f] > 1 {
		m.bad = true
	}
	switch v.Type() {
	case fastjson.TypeNull:
		return
	case fastjson.TypeNumber:
		n, err := v.Int64()
		if err != nil || n < 0 || n > maxReservation {
			m.bad = true
			return
		}
		m.n, m.named = max(m.n, n), true
	default:
		m.bad = true // a string, say: some servers coerce it, others refuse
	}
}

// form takes a form value of field f: decimal digits only.
func (m *maxTokens) form(f int, v []byte) {
	if m.seen[f]++; m.seen[f] > 1 {
		m.bad = true
	}
	v = bytes.TrimSpace(v)
	if len(v) == 0 || len(v) > 10 {
		m.bad = true
		return
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			m.bad = true
			return
		}
		n = n*10 + int64(c-'0')
	}
	if n > maxReservation {
		m.bad = true
		return
	}
	m.n, m.named = max(m.n, n), true
}

// merge folds another reading of the same body into m: the larger value,
// either ambiguity.
func (m *maxTokens) merge(o maxTokens) {
	m.bad = m.bad || o.bad
	if o.named {
		m.n, m.named = max(m.n, o.n), true
	}
}

// reservation returns the tokens the request reserves, or refuses it
// (answered 400) when its maximum is ambiguous.
func reservation(ctx *fasthttp.RequestCtx, dep *event.Deployment, body *inspected) (int64, bool) {
	mt := body.maxTok
	if !body.json && len(body.raw) > 0 {
		mt.merge(formMaxTokens(&ctx.Request.Header, body.raw))
	}
	if mt.bad {
		fail(ctx, errMaxTokens, 0)
		return 0, false
	}
	if mt.named {
		return mt.n, true
	}
	if string(ctx.Method()) == fasthttp.MethodPost {
		return max(dep.DefaultMaxTokens, 0), true
	}
	return 0, true
}

// formMaxTokens reads a form body (readBody found it well formed) as
// readBody does: a urlencoded form split both ways, a multipart form's
// parts, and — a form that is also JSON — as JSON too.
func formMaxTokens(h *fasthttp.RequestHeader, raw []byte) maxTokens {
	var out maxTokens
	ct := parseContentType(h.ContentType())
	switch {
	case ct.is("multipart/form-data"):
		out.merge(multipartMaxTokens(raw, string(ct.boundary)))
	case ct.is("application/x-www-form-urlencoded"):
		for _, seps := range formSeparators {
			var one maxTokens
			formPairs(raw, seps, func(k, v []byte) bool {
				if f := maxTokensField(k); f >= 0 {
					one.form(f, formDecode(v))
				}
				return true
			})
			out.merge(one)
		}
	default:
		return out
	}
	if looksLikeJSON(raw) {
		var one maxTokens
		if _, _, err := parseBodyTokens(raw, &one); err == nil {
			out.merge(one)
		}
	}
	return out
}

func multipartMaxTokens(body []byte, boundary string) maxTokens {
	var out maxTokens
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	var value bytes.Buffer
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return out
		}
		if err != nil {
			out.bad = true
			return out
		}
		f := maxTokensField(bytes.TrimSpace([]byte(p.FormName())))
		if f < 0 {
			continue
		}
		value.Reset()
		if _, err := value.ReadFrom(p); err != nil {
			out.bad = true
			return out
		}
		out.form(f, value.Bytes())
	}
}

// Counter kinds.
const (
	tokMinute   = iota // tokens_per_minute: a bucket
	tokDay             // tokens_per_day: a bucket
	tokQuota           // a quota of tokens
	tokRequests        // a quota of requests
	tokBudget          // a spend cap, in nano-units of the currency (budget.go)
)

// Scopes a bound belongs to.
const (
	scopeKey = iota
	scopeDeployment
	scopeProject
)

// tokenID names one counter: the scope's id, the scope and the kind (a
// struct key: no string is built per request).
type tokenID struct {
	id    string
	scope uint8
	kind  uint8
}

type tokenCounter struct {
	limit int64
	// level is a bucket's tokens left (negative: debt), as of last.
	level float64
	last  time.Time
	// used is what a quota has spent in period (its refill's index).
	used   int64
	period int64
	refill string
	// held counts reservations not settled yet: never swept while > 0.
	held int
}

type tokenShard struct {
	mu sync.Mutex
	m  map[tokenID]*tokenCounter
}

// tokenTable holds the edge's token counters.
type tokenTable struct {
	now    func() time.Time
	seed   maphash.Seed
	shards [64]tokenShard
	max    int // per shard
	// global checks the bounds across edges too (global.go).
	global *globalLimits

	untracked atomic.Uint64 // counters not kept because the table was full
	// floors are the origin's signed ledger figures (balance.go).
	floors *floorTable
}

func newTokenTable(now func() time.Time, maxCounters int) *tokenTable {
	t := &tokenTable{now: now, seed: maphash.MakeSeed(), max: max(maxCounters/64, 16)}
	for i := range t.shards {
		t.shards[i].m = map[tokenID]*tokenCounter{}
	}
	t.floors = newFloorTable()
	return t
}

func (t *tokenTable) shard(id tokenID) *tokenShard {
	h := maphash.String(t.seed, id.id) + uint64(id.scope)*7 + uint64(id.kind)
	return &t.shards[h%uint64(len(t.shards))]
}

// window is how long a bucket of kind takes to refill from empty.
func window(kind uint8) time.Duration {
	if kind == tokMinute {
		return time.Minute
	}
	return 24 * time.Hour
}

// refillBucket brings a bucket's level to now.
func (c *tokenCounter) refillBucket(kind uint8, limit int64, now time.Time) {
	if c.limit != limit { // the bound changed: keep what was spent
		c.level = min(c.level, float64(limit))
		c.limit = limit
	}
	if d := now.Sub(c.last); d > 0 {
		c.level = min(float64(limit), c.level+d.Seconds()*float64(limit)/window(kind).Seconds())
	}
	c.last = now
}

// toFull is how long a bucket takes to be full again.
func (c *tokenCounter) toFull(kind uint8) time.Duration {
	return c.until(kind, float64(c.limit))
}

// until is how long a bucket takes to hold level tokens.
func (c *tokenCounter) until(kind uint8, level float64) time.Duration {
	if c.level >= level || c.limit <= 0 {
		return 0
	}
	perSec := float64(c.limit) / window(kind).Seconds()
	return time.Duration(math.Ceil((level - c.level) / perSec * float64(time.Second)))
}

// quotaPeriod is the index of the refill period now falls in (0 for a
// quota that never refills), and when the next one starts: the numbering
// of the ledger's balances (event.QuotaPeriod).
func quotaPeriod(refill string, now time.Time) (int64, time.Time) {
	p, _, next := event.QuotaPeriod(refill, now)
	return p, next
}

// refillQuota brings a quota to now: a new period starts from nothing
// spent.
func (c *tokenCounter) refillQuota(limit int64, refill string, now time.Time) {
	c.limit = limit
	if p, _ := quotaPeriod(refill, now); p != c.period || refill != c.refill {
		c.used, c.period, c.refill = 0, p, refill
	}
}

// tokenRef is one counter a reservation took from.
type tokenRef struct {
	sh     *tokenShard
	c      *tokenCounter // nil: untracked (the table was full)
	id     tokenID
	kind   uint8
	took   int64
	period int64
	g      gref // the same take in the counter across edges
}

// tokenHold is what an admitted request holds of the token counters until
// it is settled, once.
type tokenHold struct {
	refs [12]tokenRef
	n    int
	// covered is the tokens the hold covers: the reservation, plus what
	// a stream's extensions took (streamcut.go).
	covered int64
	// spent is the request's metered cost (budget.go), set before it is
	// settled; budgets take it instead of the reservation.
	spent int64
	// pricing is the deployment's (nil: unpriced), for what a stream's
	// extension costs its budgets (tokens_extend.go).
	pricing *event.Pricing
}

var tokenHolds = sync.Pool{New: func() any { return new(tokenHold) }}

// tokenResult is what a request learned about the token bounds that apply
// to it: the tightest bucket (for the X-RateLimit-*-Tokens headers) and,
// when refused, why and when to retry.
type tokenResult struct {
	tokenHeaders

	refusal *apierror.Error
	reason  reason
	retry   time.Duration // Retry-After; 0 with a refusal: none
	// never: no wait makes this request admissible (a reservation over a
	// bound, a quota that never refills), sent as X-Should-Retry: false,
	// which the OpenAI clients obey instead of retrying a 429.
	never bool
}

// tokenHeaders are the X-RateLimit-*-Tokens of the tightest bucket.
type tokenHeaders struct {
	applies   bool // a bucket applies: the headers are set
	limit     int64
	remaining int64
	reset     time.Duration
}

// observe folds a bucket's state into the headers: the one with the least
// left is reported.
func (r *tokenResult) observe(c *tokenCounter, kind uint8) {
	left := int64(math.Max(0, math.Floor(c.level)))
	if !r.applies || left < r.remaining {
		r.applies, r.limit, r.remaining, r.reset = true, c.limit, left, c.toFull(kind)
	}
}

// tokenBound is the bounds of one scope.
type tokenBound struct {
	id    string
	scope uint8
	lim   *event.TokenLimits
}

func tokenBounds(dep *event.Deployment, key *cache.Key) (b [3]tokenBound, n int) {
	if key != nil && !key.Tokens.Empty() {
		b[n] = tokenBound{key.ID, scopeKey, key.Tokens}
		n++
	}
	if !dep.Tokens.Empty() {
		b[n] = tokenBound{dep.ID, scopeDeployment, dep.Tokens}
		n++
	}
	if !dep.ProjectTokens.Empty() {
		b[n] = tokenBound{dep.Project, scopeProject, dep.ProjectTokens}
		n++
	}
	return b, n
}

// reserve takes res tokens (and one request) from every counter of
// bounds, or from none; the hold is nil when refused.
func (t *tokenTable) reserve(bounds []tokenBound, res int64) (*tokenHold, tokenResult) {
	return t.reserveCost(bounds, res, 0)
}

// reserveCost is reserve that also takes cost nano-units from every
// budget of bounds (budget.go); cost 0 (an unpriced deployment) takes
// from none.
func (t *tokenTable) reserveCost(bounds []tokenBound, res, cost int64) (*tokenHold, tokenResult) {
	var out tokenResult
	now := t.now()
	h := tokenHolds.Get().(*tokenHold)
	need := max(res, 1)
	for _, b := range bounds {
		lim := b.lim
		for kind, limit := range [...]int64{tokMinute: lim.TokensPerMinute, tokDay: lim.TokensPerDay} {
			if limit <= 0 {
				continue
			}
			if !t.take(h, tokenID{b.id, b.scope, uint8(kind)}, limit, "", need, res, now, &out) {
				t.cancel(h)
				return nil, out
			}
		}
		if q := lim.Quota; q != nil {
			ok := true
			switch {
			case q.Tokens > 0:
				ok = t.take(h, tokenID{b.id, b.scope, tokQuota}, q.Tokens, q.Refill, need, res, now, &out)
			case q.Requests > 0:
				ok = t.take(h, tokenID{b.id, b.scope, tokRequests}, q.Requests, q.Refill, 1, 1, now, &out)
			}
			if !ok {
				t.cancel(h)
				return nil, out
			}
		}
		if bg := lim.Budget; bg != nil && cost > 0 {
			if !t.take(h, tokenID{b.id, b.scope, tokBudget}, bg.MaxNanos, bg.Refill, cost, cost, now, &out) {
				t.cancel(h)
				return nil, out
			}
		}
	}
	h.covered = res
	return h, out
}

// take checks one counter for need and takes took from it, recording the
// take in h; false (with out's refusal set) when it has too little.
func (t *tokenTable) take(h *tokenHold, id tokenID, limit int64, refill string, need, took int64, now time.Time, out *tokenResult) bool {
	sh := t.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c := sh.m[id]
	tracked := true
	if c == nil {
		if len(sh.m) >= t.max {
			t.sweep(sh, now)
		}
		p, _ := quotaPeriod(refill, now)
		c = &tokenCounter{limit: limit, level: float64(limit), last: now, period: p, refill: refill}
		if len(sh.m) < t.max {
			sh.m[id] = c
		} else {
			t.untracked.Add(1)
			tracked = false // checked as a full counter, not kept
		}
	}
	if !t.check(c, id, limit, refill, need, now, out) {
		return false
	}
	gr, ok := t.takeGlobal(id, limit, refill, need, took, now, out)
	if !ok {
		if id.kind == tokMinute || id.kind == tokDay {
			out.observe(c, id.kind)
		}
		return false
	}
	switch id.kind {
	case tokMinute, tokDay:
		c.level -= float64(took)
		out.observe(c, id.kind)
	default:
		c.used += took
	}
	ref := tokenRef{sh: sh, id: id, kind: id.kind, took: took, period: c.period, g: gr}
	if tracked {
		c.held++
		ref.c = c
	}
	h.refs[h.n] = ref
	h.n++
	return true
}

// check brings counter c (of id, under sh's lock) to now and reports
// whether it has need left: the one check of a counter, for admission
// (take) and for a stream's extension (extend) alike. False sets out's
// refusal.
func (t *tokenTable) check(c *tokenCounter, id tokenID, limit int64, refill string, need int64, now time.Time, out *tokenResult) bool {
	switch id.kind {
	case tokMinute, tokDay:
		c.refillBucket(id.kind, limit, now)
		t.floors.apply(id, c, now)
		if need > limit {
			out.observe(c, id.kind)
			out.refusal, out.reason, out.retry, out.never = errTokensTooLarge, reasonTokenLimit, 0, true
			return false
		}
		if c.level < float64(need) {
			out.observe(c, id.kind)
			out.refusal, out.reason = errTokenLimit, reasonTokenLimit
			out.retry = c.until(id.kind, float64(min(need, limit)))
			return false
		}
	default: // the quotas and budgets: an allowance per refill period
		c.refillQuota(limit, refill, now)
		t.floors.apply(id, c, now)
		tooLarge, spent := errTokensTooLarge, errQuota
		if id.kind == tokBudget {
			tooLarge, spent = errBudgetTooLarge, errBudget
		}
		return c.checkAllowance(limit, refill, need, now, out, tooLarge, spent)
	}
	return true
}

// checkAllowance checks a quota or budget counter (brought to now) for
// need: refused with tooLarge when need is more than the whole limit (no
// wait helps), with spent when too little is left until the next refill
// (Retry-After until then; none, and X-Should-Retry: false, when it never
// refills).
func (c *tokenCounter) checkAllowance(limit int64, refill string, need int64, now time.Time, out *tokenResult, tooLarge, spent *apierror.Error) bool {
	if need > limit {
		out.refusal, out.reason, out.retry, out.never = tooLarge, reasonQuota, 0, true
		return false
	}
	if limit-c.used < need {
		out.refusal, out.reason, out.retry = spent, reasonQuota, 0
		if _, next := quotaPeriod(refill, now); !next.IsZero() {
			out.retry = next.Sub(now)
		} else {
			out.never = true
		}
		return false
	}
	return true
}

// takeGlobal checks counter id across edges (global.go) once the local
// counter has admitted, and records the take there; false (with out's
// refusal set as the local counter's would be) when it refuses.
func (t *tokenTable) takeGlobal(id tokenID, limit int64, refill string, need, took int64, now time.Time, out *tokenResult) (gref, bool) {
	if t.global == nil {
		return gref{}, true
	}
	gr, r := t.global.take(gid{id.id, id.scope, tokenGKind[id.kind]}, limit, refill, need, took, true, now)
	if r.ok {
		return gr, true
	}
	out.refusal, out.reason, out.retry, out.never = errTokenLimit, reasonTokenLimit, r.retry, false
	switch id.kind {
	case tokQuota, tokRequests:
		out.refusal, out.reason = errQuota, reasonQuota
		out.never = r.retry == 0 && r.reason == gRefGlobal
	case tokBudget:
		out.refusal, out.reason = errBudget, reasonQuota
		out.never = r.retry == 0 && r.reason == gRefGlobal
	}
	return gref{}, false
}

// settle replaces h's reservation by used tokens and gives h back. A nil
// hold does nothing.
func (t *tokenTable) settle(h *tokenHold, used int64) {
	if h == nil {
		return
	}
	t.give(h, used, false)
}

// cancel gives back everything h took, its requests too, as if the
// request had never been admitted.
func (t *tokenTable) cancel(h *tokenHold) {
	t.give(h, 0, true)
}

func (t *tokenTable) give(h *tokenHold, used int64, cancel bool) {
	now := t.now()
	for i := range h.refs[:h.n] {
		r := &h.refs[i]
		if t.global != nil {
			gused := used
			switch r.kind {
			case tokRequests:
				gused = 1
				if cancel {
					gused = 0
				}
			case tokBudget: // a budget spends the metered cost, not tokens
				gused = h.spent
				if cancel {
					gused = 0
				}
			}
			t.global.settle(r.g, r.took, gused)
		}
		c := r.c
		if c == nil {
			continue
		}
		r.sh.mu.Lock()
		switch r.kind {
		case tokMinute, tokDay:
			c.refillBucket(r.kind, c.limit, now)
			c.level = min(float64(c.limit), c.level+float64(r.took-used))
		case tokQuota:
			c.refillQuota(c.limit, c.refill, now)
			if c.period == r.period {
				c.used = max(0, c.used+used-r.took)
			} else {
				c.used += used // the period the reservation was in is over
			}
		case tokRequests:
			c.refillQuota(c.limit, c.refill, now)
			if cancel && c.period == r.period {
				c.used = max(0, c.used-1)
			}
		case tokBudget:
			spent := h.spent
			if cancel {
				spent = 0
			}
			c.giveBudget(r, spent, now)
		}
		c.held--
		r.sh.mu.Unlock()
	}
	*h = tokenHold{}
	tokenHolds.Put(h)
}

// sweep drops counters that hold no reservation and are full again:
// forgetting them loses nothing.
func (t *tokenTable) sweep(sh *tokenShard, now time.Time) {
	for id, c := range sh.m {
		if c.held > 0 {
			continue
		}
		switch id.kind {
		case tokMinute, tokDay:
			if c.level+now.Sub(c.last).Seconds()*float64(c.limit)/window(id.kind).Seconds() >= float64(c.limit) {
				delete(sh.m, id)
			}
		default:
			if p, _ := quotaPeriod(c.refill, now); c.used == 0 || p != c.period {
				delete(sh.m, id)
			}
		}
	}
}

// remaining is what counter id has left now, without changing it: the
// full limit when the edge holds no counter for it.
func (t *tokenTable) remaining(id tokenID, limit int64, refill string) int64 {
	now := t.now()
	sh := t.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c0 := sh.m[id]
	if c0 == nil {
		p, _ := quotaPeriod(refill, now)
		c0 = &tokenCounter{limit: limit, level: float64(limit), last: now, period: p, refill: refill}
	}
	c := *c0
	if id.kind == tokMinute || id.kind == tokDay {
		c.refillBucket(id.kind, limit, now)
		t.floors.apply(id, &c, now)
		return int64(math.Max(0, math.Floor(c.level)))
	}
	c.refillQuota(limit, refill, now)
	t.floors.apply(id, &c, now)
	return max(0, limit-c.used)
}

// admitTokens reserves res tokens of every bound that applies to a request
// of key on dep, or refuses it (answered 429 with its headers).
func (s *Proxy) admitTokens(ctx *fasthttp.RequestCtx, dep *event.Deployment, key *cache.Key, res int64, promptChars int) (*tokenHold, tokenResult, bool) {
	bounds, n := tokenBounds(dep, key)
	h, tr := s.tokens.reserveCost(bounds[:n], res, reservedCost(dep, promptChars, res))
	if h == nil {
		tr.setHeaders(&ctx.Response.Header)
		if tr.retry > 0 {
			ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, strconv.FormatInt(int64((tr.retry+time.Second-1)/time.Second), 10))
		}
		if tr.never {
			ctx.Response.Header.Set("X-Should-Retry", "false")
		}
		fail(ctx, tr.refusal, 0)
		return nil, tr, false
	}
	h.pricing = dep.Pricing
	return h, tr, true
}

// setHeaders writes the X-RateLimit-*-Tokens headers of the tightest
// bucket, when one applies.
func (r *tokenHeaders) setHeaders(h *fasthttp.ResponseHeader) {
	if !r.applies {
		return
	}
	var buf [32]byte
	h.SetBytesV("X-RateLimit-Limit-Tokens", strconv.AppendInt(buf[:0], r.limit, 10))
	h.SetBytesV("X-RateLimit-Remaining-Tokens", strconv.AppendInt(buf[:0], r.remaining, 10))
	h.SetBytesV("X-RateLimit-Reset-Tokens", appendReset(buf[:0], r.reset))
}

// appendReset appends a duration as OpenAI's x-ratelimit-reset-* headers
// write it (and time.Duration.String, without allocating): "20ms" under a
// second, else whole seconds ("1s", "6m0s", "1h0m0s"), rounded up so that
// a client waiting that long finds the bucket full.
func appendReset(dst []byte, d time.Duration) []byte {
	switch {
	case d <= 0:
		return append(dst, "0s"...)
	case d < time.Second:
		return append(strconv.AppendInt(dst, int64((d+time.Millisecond-1)/time.Millisecond), 10), "ms"...)
	}
	secs := int64((d + time.Second - 1) / time.Second)
	if h := secs / 3600; h > 0 {
		dst = append(strconv.AppendInt(dst, h, 10), 'h')
	}
	if secs >= 60 {
		dst = append(strconv.AppendInt(dst, secs/60%60, 10), 'm')
	}
	return append(strconv.AppendInt(dst, secs%60, 10), 's')
}
