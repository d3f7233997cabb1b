package proxy

// Concurrency caps (issue 14). A key's and a deployment's max_concurrency
// bound their requests in flight at this edge: counted from admission
// (after the permission and model checks, before the rate limit and the
// upstream) until the request is finished — its answer relayed to the end,
// a stream included, or the client gone (finish, which every admitted
// request reaches exactly once: from handle, or from upstreamBody.Close for
// a streamed answer). The caps are per edge, like a site's GPU slots: N
// edges admit up to N times a cap. Every keyed request is counted, capped
// or not, so that GET /v1/key can say how many a key has in flight here.

import (
	"hash/maphash"
	"net/http"
	"sync"

	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

var errConcurrency = apierror.New(http.StatusTooManyRequests, apierror.ConcurrencyLimit,
	"too many requests in flight for this API key or deployment; retry after the time in Retry-After")

func init() { rendered[errConcurrency] = errConcurrency.Body() }

// inflight counts requests in flight per key and per deployment. An entry
// exists only while its count is above zero, so the tables hold at most one
// entry per request in flight.
type inflight struct {
	keys, deps counters
}

type counters struct {
	seed   maphash.Seed
	shards [32]counterShard
}

type counterShard struct {
	mu sync.Mutex
	n  map[string]int
	_  [40]byte // keep shards on separate cache lines
}

func newInflight() *inflight {
	f := &inflight{}
	for _, c := range []*counters{&f.keys, &f.deps} {
		c.seed = maphash.MakeSeed()
		for i := range c.shards {
			c.shards[i].n = map[string]int{}
		}
	}
	return f
}

func (c *counters) shard(id string) *counterShard {
	return &c.shards[maphash.String(c.seed, id)%uint64(len(c.shards))]
}

// acquire counts one more request for id unless limit (> 0) are in flight.
func (c *counters) acquire(id string, limit int) bool {
	sh := c.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	n := sh.n[id]
	if limit > 0 && n >= limit {
		return false
	}
	sh.n[id] = n + 1
	return true
}

func (c *counters) release(id string) {
	sh := c.shard(id)
	sh.mu.Lock()
	if n := sh.n[id] - 1; n > 0 {
		sh.n[id] = n
	} else {
		delete(sh.n, id)
	}
	sh.mu.Unlock()
}

func (c *counters) get(id string) int {
	sh := c.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.n[id]
}

// total is every request counted, for tests.
func (c *counters) total() int {
	n := 0
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		for _, v := range sh.n {
			n += v
		}
		sh.mu.Unlock()
	}
	return n
}

// admission is what one admitted request holds; release gives it back,
// once.
type admission struct {
	key, dep string
	held     bool
}

// admit counts the request against key (nil for a deployment without
// auth) and dep, or refuses it (answered 429 CONCURRENCY_LIMIT with
// Retry-After: 1) when either is at its cap, holding nothing then.
func (s *Proxy) admit(ctx *fasthttp.RequestCtx, dep *event.Deployment, key *cache.Key) (admission, bool) {
	a := admission{dep: dep.ID}
	if key != nil {
		a.key = key.ID
		if !s.inflight.keys.acquire(key.ID, key.MaxConcurrency) {
			refuseConcurrency(ctx)
			return admission{}, false
		}
	}
	if !s.inflight.deps.acquire(dep.ID, dep.MaxConcurrency) {
		if key != nil {
			s.inflight.keys.release(key.ID)
		}
		refuseConcurrency(ctx)
		return admission{}, false
	}
	a.held = true
	return a, true
}

func refuseConcurrency(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, "1")
	fail(ctx, errConcurrency, 0)
}

// release gives back what a holds; a second call does nothing.
func (s *Proxy) release(a *admission) {
	if !a.held {
		return
	}
	a.held = false
	if a.key != "" {
		s.inflight.keys.release(a.key)
	}
	s.inflight.deps.release(a.dep)
}
