package proxy

import (
	"hash/maphash"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

// limiter enforces requests-per-minute budgets per key and per deployment
// with token buckets (capacity = the per-minute budget, refilled evenly), so
// a client may burst up to its budget and then gets one request per
// 60s/budget. Budgets are per edge: N edges together admit up to N times a
// budget. The table is bounded: buckets idle long enough to be full again
// are swept, and when it is full anyway new buckets are not tracked (the
// request is admitted and counted in untracked).
type limiter struct {
	now    func() time.Time
	seed   maphash.Seed
	shards [64]limitShard
	max    int // per shard
	// global checks the budgets across edges too (global.go).
	global *globalLimits

	untracked atomic.Uint64 // buckets not kept because the table was full
}

type limitShard struct {
	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
	rpm    int
}

// limitResult is what a request learned about the budgets that apply to it.
type limitResult struct {
	applies   bool
	limit     int
	remaining int
	reset     int64         // unix seconds when the tightest bucket is full again
	retry     time.Duration // > 0 when refused
	// tokens are the token bounds' headers (tokens.go), set with these.
	tokens tokenHeaders
}

func newLimiter(now func() time.Time, maxBuckets int) *limiter {
	l := &limiter{now: now, seed: maphash.MakeSeed(), max: max(maxBuckets/64, 16)}
	for i := range l.shards {
		l.shards[i].buckets = map[string]*bucket{}
	}
	return l
}

// check takes one request from the key's and the deployment's budgets, or
// from neither if either is spent. Requests under no budget cost nothing.
func (l *limiter) check(dep *event.Deployment, key *cache.Key) limitResult {
	var res limitResult
	var keyRL *event.RateLimit
	if key != nil {
		keyRL = key.RateLimit
	}
	depRL := dep.RateLimit
	if !limited(keyRL) && !limited(depRL) {
		return res
	}
	now := l.now()
	var took *bucketRef
	if limited(keyRL) {
		if took = l.take("k\x00"+key.ID, gid{key.ID, scopeKey, gRPM}, keyRL.RequestsPerMinute, now, &res); took == nil {
			return res
		}
	}
	if limited(depRL) && l.take("d\x00"+dep.ID, gid{dep.ID, scopeDeployment, gRPM}, depRL.RequestsPerMinute, now, &res) == nil && took != nil {
		took.refund() // give back what the key's budget gave
	}
	return res
}

func limited(rl *event.RateLimit) bool { return rl != nil && rl.RequestsPerMinute > 0 }

type bucketRef struct {
	s *limitShard
	b *bucket
	g gref
	l *limiter
}

func (r *bucketRef) refund() {
	r.s.mu.Lock()
	r.b.tokens = min(r.b.tokens+1, float64(r.b.rpm))
	r.s.mu.Unlock()
	if r.l != nil && r.l.global != nil {
		r.l.global.refund(r.g)
	}
}

// take spends one token of the bucket id, folding what the request learned
// into res; nil means the bucket is empty, or (gid: the same budget across
// edges) the global estimate is spent.
func (l *limiter) take(id string, g gid, rpm int, now time.Time, res *limitResult) *bucketRef {
	s := &l.shards[maphash.String(l.seed, id)%uint64(len(l.shards))]
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buckets[id]
	if b == nil {
		if len(s.buckets) >= l.max {
			l.sweep(s, now)
		}
		if len(s.buckets) >= l.max {
			l.untracked.Add(1)
			return &bucketRef{s: s, b: &bucket{rpm: rpm}}
		}
		b = &bucket{tokens: float64(rpm), last: now, rpm: rpm}
		s.buckets[id] = b
	}
	perSec := float64(rpm) / 60
	if b.rpm != rpm { // the budget changed: keep what was spent
		b.tokens = min(b.tokens, float64(rpm))
		b.rpm = rpm
	}
	b.tokens = min(float64(rpm), b.tokens+now.Sub(b.last).Seconds()*perSec)
	b.last = now

	refused := b.tokens < 1
	var gr gref
	var gres gResult
	if !refused && l.global != nil {
		gr, gres = l.global.take(g, int64(rpm), "", 1, 1, false, now)
		refused = !gres.ok
	}
	if !refused {
		b.tokens--
	}
	remaining := int(b.tokens)
	if gres.applies {
		remaining = min(remaining, int(gres.remaining))
	}
	toFull := time.Duration((float64(rpm) - b.tokens) / perSec * float64(time.Second))
	if !res.applies || remaining < res.remaining {
		res.applies, res.limit, res.remaining = true, rpm, remaining
		res.reset = now.Add(toFull).Unix() + 1
	}
	if refused {
		res.retry = max(res.retry, time.Duration((1-b.tokens)/perSec*float64(time.Second)), gres.retry)
		return nil
	}
	return &bucketRef{s: s, b: b, g: gr, l: l}
}

// sweep drops buckets that have refilled completely: forgetting them loses
// nothing.
func (l *limiter) sweep(s *limitShard, now time.Time) {
	for id, b := range s.buckets {
		if now.Sub(b.last) >= time.Minute {
			delete(s.buckets, id)
		}
	}
}

var errRateLimited = apierror.New(http.StatusTooManyRequests, apierror.RateLimited,
	"rate limit exceeded; retry after the time in Retry-After")

func init() { rendered[errRateLimited] = errRateLimited.Body() }

// setHeaders writes the X-RateLimit-* headers (and Retry-After on refusal).
func (r limitResult) setHeaders(h *fasthttp.ResponseHeader) {
	r.tokens.setHeaders(h)
	if !r.applies {
		return
	}
	h.Set("X-RateLimit-Limit", strconv.Itoa(r.limit))
	h.Set("X-RateLimit-Remaining", strconv.Itoa(r.remaining))
	h.Set("X-RateLimit-Reset", strconv.FormatInt(r.reset, 10))
	if r.retry > 0 {
		h.Set(fasthttp.HeaderRetryAfter, strconv.FormatInt(int64((r.retry+time.Second-1)/time.Second), 10))
	}
}
