package proxy

import (
	"bytes"
	"hash/maphash"
	"net/http"
	"sync"

	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/internal/apierror"
)

// request is the edge's one reading of a request, made once when its header
// has arrived and kept until the request is finished: the method, the host
// and the decoded, normalised path and query it is routed by, the matched
// route, the credential, and the body limit. Everything after — reading the
// body, the permission checks, the limits, the audit record and the URI sent
// upstream — uses this reading and never the raw request line again, so the
// upstream is only ever sent what the edge decided on.
type request struct {
	// refusal, when set, is the answer: the request is refused without its
	// body being read or anything else being looked at.
	refusal *apierror.Error
	refused refusalReason

	host []byte // routing form: lower case, no port, no trailing dot
	// path is decoded and normalised and starts with '/': the path routed
	// on, and — without the prefix under strip_prefix — the one every check
	// after routing reads and the upstream gets. clientPath, set only when
	// the prefix was stripped, is the path as routed (for the audit record).
	path       []byte
	clientPath []byte
	query      []byte // as sent (checked to hold only visible ASCII)
	// getOrHead: the method's kind, for permissions and the open routes.
	getOrHead bool

	rt        *route // nil when no deployment matched
	bodyLimit int    // the matched deployment's, 0 = the server's
	// models is the model allow-lists that apply (models.go), once the
	// key is known.
	models modelRule
	// tok is the request's token reservation (tokens.go; nil: no token
	// bound applies), settled by finish before the reading is released.
	tok *tokenHold

	// cred is the keymesh credential (a copy); fromAuth says it came from
	// Authorization: Bearer.
	cred     []byte
	fromAuth bool
	// id is the request's X-Request-Id, as its answer and the request
	// forwarded carry it (setRequestID), backed by idBuf: read from here,
	// not looked up in the headers again.
	id    []byte
	idBuf [auditMaxRequestID]byte
	buf   [256]byte // backs host, path, query and cred for most requests
	spill []byte    // backs them for the others; kept for the next request
}

// refusalReason names a refusal for keymesh_edge_requests_refused_total.
type refusalReason uint8

const (
	refusedNone refusalReason = iota
	refusedMethod
	refusedTarget
	refusedPath
	refusedHost
	refusedCredentials
	refusedTrailers
	refusedBodyEncoding
	refusedKeyInURL
	refusedNoDeployment
	numRefusals
)

var refusalNames = [numRefusals]string{"", "method", "target", "path", "host", "conflicting_credentials",
	"trailers", "body_encoding", "key_in_url", "no_deployment"}

var (
	errMethodRefused = apierror.New(http.StatusMethodNotAllowed, apierror.MethodNotAllowed,
		"CONNECT and TRACE are not served")
	errConflictingCredentials = apierror.New(http.StatusBadRequest, apierror.ValidationError,
		"the request carries more than one credential: send one API key, once")
	errTrailers = apierror.New(http.StatusBadRequest, apierror.ValidationError,
		"request trailers are not accepted")
	errKeyInURL = apierror.New(http.StatusBadRequest, apierror.ValidationError,
		"an API key must be sent as X-API-Key or Authorization: Bearer, never in the URL")
	// targetRefusals render each target error once.
	targetRefusals = func() map[error]*apierror.Error {
		m := map[error]*apierror.Error{}
		for _, err := range []error{errTargetForm, errTargetUser, errTargetFrag, errTargetHost, errPathEscape,
			errPathChar, errQueryChar, errMethodToken, errTargetLength} {
			m[err] = apierror.New(http.StatusBadRequest, apierror.ValidationError, err.Error())
		}
		return m
	}()
)

func init() {
	for _, e := range []*apierror.Error{errMethodRefused, errConflictingCredentials, errTrailers, errKeyInURL} {
		rendered[e] = e.Body()
	}
	for _, e := range targetRefusals {
		rendered[e] = e.Body()
	}
}

var requestPool = sync.Pool{New: func() any { return new(request) }}

func acquireRequest() *request { return requestPool.Get().(*request) }

func releaseRequest(r *request) {
	if r == nil {
		return
	}
	spill := r.spill
	*r = request{}
	if cap(spill) <= maxTargetLen*4 {
		r.spill = spill[:0]
	}
	requestPool.Put(r)
}

func (r *request) refuse(e *apierror.Error, why refusalReason) {
	r.refusal, r.refused = e, why
}

// read reads h into r: what is refused outright, and otherwise the route
// and everything later checks need.
func (r *request) read(h *fasthttp.RequestHeader, rtr *router, maxBody int) {
	m := h.Method()
	if !methodToken(m) {
		r.refuse(targetRefusals[errMethodToken], refusedMethod)
		return
	}
	// Methods are case-sensitive, but some servers are not: refuse every
	// spelling of the methods that tunnel (CONNECT) or echo (TRACE) a
	// request, credentials included.
	if bytes.EqualFold(m, []byte(fasthttp.MethodConnect)) || bytes.EqualFold(m, []byte(fasthttp.MethodTrace)) ||
		bytes.EqualFold(m, []byte("TRACK")) {
		r.refuse(errMethodRefused, refusedMethod)
		return
	}
	r.getOrHead = string(m) == fasthttp.MethodGet || string(m) == fasthttp.MethodHead

	host, rawPath, query, absolute, err := splitTarget(h.RequestURI())
	if err != nil {
		r.refuse(targetRefusals[err], refusedTarget)
		return
	}
	if !absolute {
		host = h.Host() // absolute-form: the target's host wins (RFC 9112 §3.2.2)
	}
	buf := r.buf[:0]
	if need := len(host) + len(rawPath) + len(query) + 128; need > cap(buf) {
		if cap(r.spill) < need {
			r.spill = make([]byte, 0, need)
		}
		buf = r.spill[:0]
	}
	if buf, err = normaliseHost(buf, host); err != nil {
		r.refuse(targetRefusals[err], refusedHost)
		return
	}
	r.host = buf[:len(buf):len(buf)]
	n := len(buf)
	if buf, err = normalisePath(buf, rawPath); err != nil {
		r.refuse(targetRefusals[err], refusedPath)
		return
	}
	r.path = buf[n:len(buf):len(buf)]
	n = len(buf)
	buf = append(buf, query...)
	r.query = buf[n:len(buf):len(buf)]
	if containsKeyLike(r.path) || containsKeyLikeEscaped(r.query) {
		r.refuse(errKeyInURL, refusedKeyInURL)
		return
	}

	n = len(buf)
	cred, fromAuth, ok := credential(h)
	if !ok {
		r.refuse(errConflictingCredentials, refusedCredentials)
		return
	}
	buf = append(buf, cred...)
	r.cred, r.fromAuth = buf[n:len(buf):len(buf)], fromAuth

	r.rt = rtr.match(r.host, r.path)
	switch {
	case r.rt != nil:
		if r.rt.strip {
			r.clientPath, r.path = r.path, r.rt.stripPrefix(r.path)
		}
		if l := r.rt.dep.MaxBodyBytes; l > 0 && l < int64(maxBody) {
			r.bodyLimit = int(l)
		}
	case !r.open() && !r.keyInfo() && string(m) != fasthttp.MethodOptions: // (OPTIONS: maybe a CORS preflight)
		// No deployment: nothing of the body is needed to say so.
		r.refuse(errNoDeployment, refusedNoDeployment)
	}
}

// open reports whether the request is one of the routes served without a
// deployment or a key: GET or HEAD /health and /ping.
func (r *request) open() bool {
	return r.getOrHead && (string(r.path) == "/health" || string(r.path) == "/ping")
}

// pendingRequests carries each request's reading from the header hook,
// which fasthttp calls with the request's header alone, to the handler and
// the error handler, which get the RequestCtx that header belongs to. It is
// keyed by that header (&ctx.Request.Header is what the hook is given).
//
// An entry is taken out by the handler or the error handler. A request that
// ends between its header and its handler without either running (the client
// hung up mid-body) leaves its entry behind until its RequestCtx serves the
// next request and the hook replaces it; each shard holds at most
// maxPendingPerShard entries, past which arbitrary ones are dropped. A
// handler that finds no entry reads the header again: the only cost of a
// dropped entry is that its body limit was the server's own.
type pendingRequests struct {
	seed   maphash.Seed
	shards [16]pendingShard
}

type pendingShard struct {
	mu sync.Mutex
	m  map[*fasthttp.RequestHeader]*request
	_  [40]byte // keep shards on separate cache lines
}

const maxPendingPerShard = 4096

func newPendingRequests() *pendingRequests {
	p := &pendingRequests{seed: maphash.MakeSeed()}
	for i := range p.shards {
		p.shards[i].m = make(map[*fasthttp.RequestHeader]*request)
	}
	return p
}

func (p *pendingRequests) shard(h *fasthttp.RequestHeader) *pendingShard {
	return &p.shards[maphash.Comparable(p.seed, h)%uint64(len(p.shards))]
}

func (p *pendingRequests) put(h *fasthttp.RequestHeader, r *request) {
	sh := p.shard(h)
	sh.mu.Lock()
	old := sh.m[h]
	if old == nil && len(sh.m) >= maxPendingPerShard {
		for k, v := range sh.m {
			delete(sh.m, k)
			releaseRequest(v)
			break
		}
	}
	sh.m[h] = r
	sh.mu.Unlock()
	releaseRequest(old)
}

// take removes and returns h's reading, or nil.
func (p *pendingRequests) take(h *fasthttp.RequestHeader) *request {
	sh := p.shard(h)
	sh.mu.Lock()
	r := sh.m[h]
	if r != nil {
		delete(sh.m, h)
	}
	sh.mu.Unlock()
	return r
}

// len returns how many readings wait for their handler.
func (p *pendingRequests) len() int {
	n := 0
	for i := range p.shards {
		sh := &p.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}
