package proxy

// GET /v1/key (issue 14): a key's own view of itself at this edge,
// authenticated by the key (X-API-Key or Authorization: Bearer) and
// answered from the State alone — never the upstream. It is served on any
// host and under any deployment's path prefix (it shadows a deployment's
// own /v1/key for GET and HEAD), for any valid key, whatever its
// permissions or links: a key learns nothing it could not be told by the
// one who holds it. A refused key gets the same answer as elsewhere (401
// AUTHENTICATION_FAILED, 503 when the key cannot be proven). It never holds
// the secret or a hash of it.

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
)

// keyInfoPath is the route GET /v1/key answers on.
const keyInfoPath = "/v1/key"

// keyInfo reports whether r is GET or HEAD /v1/key.
func (r *request) keyInfo() bool { return r.getOrHead && string(r.path) == keyInfoPath }

// keyInfoAnswer is the body of GET /v1/key.
type keyInfoAnswer struct {
	ID          string           `json:"id"`
	Name        string           `json:"name"`
	Project     string           `json:"project"`
	Revision    uint64           `json:"revision"`
	ExpiresAt   *time.Time       `json:"expires_at"`
	Permissions []string         `json:"permissions"`
	RateLimit   *event.RateLimit `json:"rate_limit"`
	Models      []string         `json:"models"`
	// MaxConcurrency is null for a key without a cap.
	MaxConcurrency *int `json:"max_concurrency"`
	// Deployments are the ids of the linked deployments.
	Deployments []string `json:"deployments"`
	// TokensPerMinute, TokensPerDay and Quota are the key's token bounds
	// (null: none); Remaining what is left of each at this edge.
	TokensPerMinute *int64       `json:"tokens_per_minute"`
	TokensPerDay    *int64       `json:"tokens_per_day"`
	Quota           *event.Quota `json:"quota"`
	Remaining       keyRemaining `json:"remaining"`
	// Global is the key's use of each of its bounds across the edges:
	// this edge's own plus what the others reported (global.go); null for
	// a key without bounds.
	Global *keyGlobal `json:"global"`
	// InFlight is the key's requests in flight at this edge, this one not
	// counted.
	InFlight int    `json:"in_flight"`
	Edge     string `json:"edge"`
	Site     string `json:"site"`
}

// keyRemaining is what is left of each of a key's token bounds at this
// edge: a member only for a bound the key has; never negative.
type keyRemaining struct {
	TokensPerMinute *int64 `json:"tokens_per_minute,omitempty"`
	TokensPerDay    *int64 `json:"tokens_per_day,omitempty"`
	Quota           *int64 `json:"quota,omitempty"`
}

// keyGlobal is a key's use across the edges.
type keyGlobal struct {
	// Edges is how many edges this edge shares the bounds with, itself
	// included (1: it knows of no other); Partitioned whether it has lost
	// touch with them (it then admits at most its share).
	Edges       int64 `json:"edges"`
	Partitioned bool  `json:"partitioned"`
	// A member only for a bound the key has.
	RateLimit       *globalFigure `json:"rate_limit,omitempty"`
	TokensPerMinute *globalFigure `json:"tokens_per_minute,omitempty"`
	TokensPerDay    *globalFigure `json:"tokens_per_day,omitempty"`
	Quota           *globalFigure `json:"quota,omitempty"`
}

// globalFigure is one bound's global figures: used over its window (the
// sliding minute or day, the quota's period), and what is left of limit.
type globalFigure struct {
	Limit     int64 `json:"limit"`
	Used      int64 `json:"used"`
	Remaining int64 `json:"remaining"`
}

// globalInfo fills a's global figures of key.
func (s *Proxy) globalInfo(a *keyInfoAnswer, key *cache.Key) {
	t := key.Tokens
	rl := key.RateLimit
	if t.Empty() && !limited(rl) {
		return
	}
	g := s.global
	out := &keyGlobal{Edges: g.edges(), Partitioned: g.partitioned(g.now())}
	fig := func(kind uint8, limit int64, refill string) *globalFigure {
		used := g.usage(gid{key.ID, scopeKey, kind}, refill)
		return &globalFigure{Limit: limit, Used: used, Remaining: max(0, limit-used)}
	}
	if limited(rl) {
		out.RateLimit = fig(gRPM, int64(rl.RequestsPerMinute), "")
	}
	if !t.Empty() {
		if n := t.TokensPerMinute; n > 0 {
			out.TokensPerMinute = fig(gTPM, n, "")
		}
		if n := t.TokensPerDay; n > 0 {
			out.TokensPerDay = fig(gTPD, n, "")
		}
		if q := t.Quota; q != nil {
			switch {
			case q.Tokens > 0:
				out.Quota = fig(gQuotaTokens, q.Tokens, q.Refill)
			case q.Requests > 0:
				out.Quota = fig(gQuotaRequests, q.Requests, q.Refill)
			}
		}
	}
	a.Global = out
}

// tokenInfo fills a's token bounds of key and what is left of them.
func (s *Proxy) tokenInfo(a *keyInfoAnswer, key *cache.Key) {
	t := key.Tokens
	if t.Empty() {
		return
	}
	left := func(kind uint8, limit int64, refill string) *int64 {
		n := s.tokens.remaining(tokenID{key.ID, scopeKey, kind}, limit, refill)
		return &n
	}
	if n := t.TokensPerMinute; n > 0 {
		a.TokensPerMinute, a.Remaining.TokensPerMinute = &n, left(tokMinute, n, "")
	}
	if n := t.TokensPerDay; n > 0 {
		a.TokensPerDay, a.Remaining.TokensPerDay = &n, left(tokDay, n, "")
	}
	if q := t.Quota; q != nil {
		a.Quota = q
		switch {
		case q.Tokens > 0:
			a.Remaining.Quota = left(tokQuota, q.Tokens, q.Refill)
		case q.Requests > 0:
			a.Remaining.Quota = left(tokRequests, q.Requests, q.Refill)
		}
	}
}

// serveKeyInfo answers GET /v1/key and returns the key it answered for (or
// refused, when known: disabled, expired) and why.
func (s *Proxy) serveKeyInfo(ctx *fasthttp.RequestCtx, r *request) (*cache.Key, reason) {
	if len(r.cred) == 0 {
		ctx.Response.Header.Set(fasthttp.HeaderWWWAuthenticate, "Bearer")
		fail(ctx, errNoCredential, 0)
		return nil, reasonNoCredential
	}
	h, err := apikey.Parse(r.cred)
	if err != nil {
		fail(ctx, errInvalidKey, 0)
		return nil, reasonMalformed
	}
	key, err := s.state.Authorize(context.Background(), h)
	switch {
	case errors.Is(err, cache.ErrUnavailable):
		ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, "1")
		fail(ctx, errUnavailable, 0)
		return nil, reasonUnavailable
	case errors.Is(err, cache.ErrExpired):
		fail(ctx, errInvalidKey, 0)
		return key, reasonExpired
	case errors.Is(err, cache.ErrDisabled):
		fail(ctx, errInvalidKey, 0)
		return key, reasonDisabled
	case err != nil:
		fail(ctx, errInvalidKey, 0)
		return nil, reasonUnknown
	}
	a := keyInfoAnswer{ID: key.ID, Name: key.Name, Project: key.Project, Revision: key.Revision,
		Permissions: key.Permissions(), RateLimit: key.RateLimit, Models: key.Models, Deployments: key.Deployments,
		InFlight: s.inflight.keys.get(key.ID), Edge: s.cfg.EdgeID, Site: s.cfg.Site}
	if t, ok := key.ExpiresAt(); ok {
		a.ExpiresAt = &t
	}
	if key.MaxConcurrency > 0 {
		n := key.MaxConcurrency
		a.MaxConcurrency = &n
	}
	s.tokenInfo(&a, key)
	s.globalInfo(&a, key)
	if a.Models == nil {
		a.Models = []string{}
	}
	if a.Deployments == nil {
		a.Deployments = []string{}
	}
	body, err := json.Marshal(a)
	if err != nil { // cannot happen: every member encodes
		fail(ctx, errUpstream, 0)
		return key, reasonAllowed
	}
	ctx.Response.Header.SetContentType("application/json")
	ctx.Response.Header.Set(fasthttp.HeaderCacheControl, "no-store")
	ctx.SetBody(body)
	return key, reasonAllowed
}
