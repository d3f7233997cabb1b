package proxy

import (
	"bytes"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
	"github.com/keymesh/keymesh/internal/modelglob"
)

// router matches requests to deployments. It is built from one immutable
// deployment set and never changes; a new set gets a new router.
type router struct {
	deps   *cache.Deployments
	routes []*route
}

type route struct {
	dep       *event.Deployment
	exact     [][]byte // lower-case host names
	suffixes  [][]byte // ".example.com" for "*.example.com"
	prefix    []byte
	upstreams []*upstream // for this edge's site, else "*"
	next      atomic.Uint32
	models    modelglob.List // the deployment's model allow-list, compiled
	// noUpstream, when the deployment lists no upstream for this edge's
	// site and no "*" entry, is the 502 body every request gets: a
	// misconfiguration, told apart from an upstream that cannot be reached.
	noUpstream []byte
	// strip: the deployment's strip_prefix, with a prefix other than "/".
	strip bool
}

type upstream struct {
	base    string // scheme://host[:port][/escaped path] without a trailing slash
	host    string
	health  *health // shared by every router that lists this base URL
	latency prometheus.Observer
	// denied, when set, is why the upstream policy refuses this URL
	// whatever its name resolves to; deniedLogged, whether that was said.
	denied       *upstreamDeniedError
	deniedLogged atomic.Bool
}

func newRouter(deps *cache.Deployments, site string, hs *healthTable, latency *prometheus.HistogramVec, policy *upstreamPolicy) *router {
	r := &router{deps: deps}
	for _, d := range deps.List() {
		rt := &route{dep: d, prefix: []byte(d.PathPrefix), models: modelglob.Compile(d.Models)}
		if len(rt.prefix) == 0 {
			rt.prefix = []byte("/")
		}
		rt.strip = d.StripPrefix && len(rt.prefix) > 1
		for _, h := range d.Hosts {
			h = strings.ToLower(h)
			if s, ok := strings.CutPrefix(h, "*"); ok {
				rt.suffixes = append(rt.suffixes, []byte(s))
			} else {
				rt.exact = append(rt.exact, []byte(h))
			}
		}
		list, ok := d.Upstreams[site]
		if !ok {
			list = d.Upstreams["*"]
		}
		if len(list) == 0 {
			rt.noUpstream = apierror.New(http.StatusBadGateway, apierror.UpstreamError,
				"no upstream configured for site "+site).Body()
		}
		for _, raw := range list {
			u, err := url.Parse(raw)
			if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
				continue // the origin validates upstreams; skip anything odd
			}
			// User information is left out: the fasthttp client would turn
			// it into an Authorization header.
			base := strings.TrimSuffix(u.Scheme+"://"+u.Host+u.EscapedPath(), "/")
			up := &upstream{base: base, host: u.Host, health: hs.get(base), latency: latency.WithLabelValues(d.Name)}
			if policy != nil {
				up.denied = policy.allowsURL(u)
			}
			rt.upstreams = append(rt.upstreams, up)
		}
		r.routes = append(r.routes, rt)
	}
	// Most specific first: longer path prefixes win.
	sort.SliceStable(r.routes, func(i, j int) bool { return len(r.routes[i].prefix) > len(r.routes[j].prefix) })
	return r
}

// match returns the route for host (without port) and path: the best host
// match (exact, then wildcard, then deployments without hosts), and among
// those the longest path prefix.
func (r *router) match(host, path []byte) *route {
	var best *route
	bestScore := 0
	for _, rt := range r.routes {
		if !prefixMatch(path, rt.prefix) {
			continue
		}
		score := rt.hostScore(host)
		if score > bestScore { // routes are sorted, so ties keep the longer prefix
			best, bestScore = rt, score
		}
	}
	return best
}

// stripPrefix returns path, which rt matched, without rt's prefix: always
// starting with '/' ("/v1" and "/v1/" both take "/v1/x" to "/x", and "/v1"
// to "/"). path is normalised (no dot segments, encoded slashes read as
// separators), so what remains is a path under the prefix and nothing
// else. It allocates nothing: the result is path's tail or "/".
func (rt *route) stripPrefix(path []byte) []byte {
	n := len(rt.prefix)
	if rt.prefix[n-1] == '/' {
		n-- // keep the separator the prefix ends with
	}
	if len(path) <= n {
		return slash
	}
	return path[n:]
}

func prefixMatch(path, prefix []byte) bool {
	if !bytes.HasPrefix(path, prefix) {
		return false
	}
	// "/v1" matches "/v1" and "/v1/...", not "/v10".
	return prefix[len(prefix)-1] == '/' || len(path) == len(prefix) || path[len(prefix)] == '/'
}

func (rt *route) hostScore(host []byte) int {
	if len(rt.exact) == 0 && len(rt.suffixes) == 0 {
		return 1
	}
	for _, h := range rt.exact {
		if bytes.EqualFold(host, h) {
			return 3
		}
	}
	for _, s := range rt.suffixes {
		if len(host) > len(s) && bytes.EqualFold(host[len(host)-len(s):], s) {
			return 2
		}
	}
	return 0
}

// pick returns the next upstream in round-robin order that is not resting
// after connection failures, skipping except and those the upstream policy
// refuses; if every one is resting, the next one regardless (better a try
// than a certain 502); if every one is refused, a refused one (whose 502
// says why).
func (rt *route) pick(now time.Time, except *upstream) *upstream {
	n := len(rt.upstreams)
	if n == 0 {
		return nil
	}
	start := int(rt.next.Add(1)-1) % n
	var resting, refused *upstream
	for i := range n {
		u := rt.upstreams[(start+i)%n]
		switch {
		case u == except:
		case u.denied != nil:
			if refused == nil {
				refused = u
			}
		case u.health.usable(now):
			return u
		case resting == nil:
			resting = u
		}
	}
	if resting != nil {
		return resting
	}
	return refused
}
