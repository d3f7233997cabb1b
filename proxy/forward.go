package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

// hopByHop are the headers that describe one connection, not the message;
// a proxy must not forward them (RFC 9110 §7.6.1).
var hopByHop = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
	"TE", "Trailer", "Transfer-Encoding", "Upgrade",
}

var hopByHopBytes = func() (out [][]byte) {
	for _, name := range hopByHop {
		out = append(out, []byte(name))
	}
	return out
}()

// stripResponseHopByHop looks for a hop-by-hop header in one pass first:
// most messages carry none, and deleting each possible name is a scan of
// its own. (Ranging over the concrete type's headers allocates nothing;
// through an interface it would.) Requests: scrubRequest.
func stripResponseHopByHop(h *fasthttp.ResponseHeader) {
	for k := range h.All() {
		if forwardNames.class(k) == nameHopByHop {
			stripHopByHop(h)
			return
		}
	}
}

func stripHopByHop(h interface {
	Peek(string) []byte
	Del(string)
	DelBytes([]byte)
}) {
	// Headers the client named in Connection are hop-by-hop too.
	for c := h.Peek("Connection"); len(c) > 0; {
		var name []byte
		name, c, _ = bytes.Cut(c, []byte(","))
		if name = bytes.TrimSpace(name); len(name) > 0 {
			h.DelBytes(name)
		}
	}
	for _, name := range hopByHop {
		h.Del(name)
	}
}

// forward sends the request to one of the route's upstreams and relays the
// answer; a streamed answer is relayed chunk by chunk as it arrives, and is
// returned (nil otherwise) so that the request is finished once it is.
//
// What goes upstream is built, not passed on: the upstream server's own
// scheme, host and port, the request's normalised path and its query (the
// ones routing and the permission checks used), the body as inspected, and
// the client's headers less hop-by-hop ones, credentials and look-alikes,
// with the edge's own headers set last so that nothing the client sends
// (Connection naming them, say) removes them.
//
// m, when the request is metered, is fed the answer as it is relayed.
func (s *Proxy) forward(ctx *fasthttp.RequestCtx, r *request, body inspected, lim limitResult, m *meter) *upstreamBody {
	rt := r.rt
	now := time.Now()
	up := rt.pick(now, nil)
	if up == nil {
		fail(ctx, errUpstream, 0)
		return nil
	}
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	// Header and body only: Request.CopyTo would carry the client side's TLS
	// flag and make the upstream request HTTPS too.
	ctx.Request.Header.CopyTo(&req.Header)
	req.SetBodyRaw(body.raw) // ctx outlives the upstream call that reads it
	// body.raw is the decoded body when it came encoded. When the edge
	// asked for usage and removes the chunk that carries it, or settles
	// (and may cut, streamcut.go) a token reservation from the answer, it
	// must be able to read the answer: it comes unencoded (the client
	// still gets it as the upstream sends it).
	scrubRequest(&req.Header, body.decoded, m != nil && (m.strip || r.tok != nil))
	if refusal := s.setUpstreamAuth(&req.Header, &ctx.Request.Header, rt.dep, r); refusal != nil {
		fail(ctx, refusal, 0)
		return nil
	}
	// scrubRequest removed every copy the client sent of these three; the
	// names are canonical, so they are set without normalising them again.
	req.Header.SetCanonical(headerRequestID, r.id)
	var xff [256]byte
	req.Header.SetCanonical(headerForwardedFor, appendForwardedFor(xff[:0], &ctx.Request.Header, ctx.RemoteAddr()))
	if ctx.IsTLS() {
		req.Header.SetCanonical(headerForwardedProto, protoHTTPS)
	} else {
		req.Header.SetCanonical(headerForwardedProto, protoHTTP)
	}

	resp := fasthttp.AcquireResponse()
	err := s.send(req, resp, up, r, now)
	if err != nil && isConnectError(err) {
		// The request never left: another upstream may take it.
		if alt := rt.pick(now, up); alt != nil && alt != up {
			up = alt
			err = s.send(req, resp, up, r, time.Now())
		}
	}
	if err != nil {
		s.upstreamFailed(ctx, err, rt.dep, up)
		fasthttp.ReleaseResponse(resp)
		return nil
	}
	if r.models.filterList { // GET /v1/models under a model allow-list (models.go)
		if refusal := filterModelList(resp, &r.models); refusal != nil {
			fasthttp.ReleaseResponse(resp)
			fail(ctx, refusal, 0)
			return nil
		}
	}

	whole := false
	if n, ok := wholeLength(resp); ok {
		// Read before anything of the answer is set: an upstream that
		// ends it short is a 502, as one that never answered.
		if err := readWhole(ctx, resp, n); err != nil {
			s.upstreamFailed(ctx, err, rt.dep, up)
			fasthttp.ReleaseResponse(resp)
			return nil
		}
		whole = true
	}

	resp.Header.CopyTo(&ctx.Response.Header)
	stripResponseHopByHop(&ctx.Response.Header)
	// serve put the request's id on the answer; the upstream's copy replaced it.
	ctx.Response.Header.SetCanonical(headerRequestID, r.id)
	lim.setHeaders(&ctx.Response.Header)
	s.cors.apply(ctx) // the upstream's headers replaced ours
	if m != nil {
		m.start(&resp.Header)
	}
	if body := resp.BodyStream(); body != nil {
		// The server closes the stream when it is done writing or the
		// client went away; closing it ends the upstream request.
		s.metrics.streams.Inc()
		b := upstreamBodies.Get().(*upstreamBody)
		b.resp, b.r, b.streams, b.m = resp, body, s.metrics.streams, m
		size := resp.Header.ContentLength()
		if m != nil && m.strip {
			size = -1 // what the client gets is shorter than what the upstream sent
		}
		if m != nil && r.tok != nil && m.mode == meterSSE && resp.StatusCode() < 300 {
			m.bound(s.tokens, r.tok) // a hard budget (streamcut.go): it may end early
			size = -1
		}
		ctx.Response.SetBodyStream(b, size)
		return b
	}
	if whole { // ctx's body holds the answer already
		if m != nil {
			m.feed(ctx.Response.Body())
		}
		fasthttp.ReleaseResponse(resp)
		return nil
	}
	if m != nil {
		m.feed(resp.Body())
	}
	ctx.Response.SetBody(resp.Body())
	fasthttp.ReleaseResponse(resp)
	return nil
}

// maxWholeAnswer bounds the answers read whole before they are relayed.
const maxWholeAnswer = 64 << 10

// wholeLength reports whether resp's body, still a stream (the client
// streams every body), is read whole before it is relayed, and its
// length: a body of known length up to maxWholeAnswer that is not an
// event stream — a non-streamed completion, an error. Such an answer
// then goes to the client as one written body instead of through the
// server's stream relay, and its connection back to the pool at once; a
// larger, unknown-length or event-stream body is relayed as it arrives.
func wholeLength(resp *fasthttp.Response) (int, bool) {
	if resp.BodyStream() == nil {
		return 0, false
	}
	n := resp.Header.ContentLength()
	if n < 0 || n > maxWholeAnswer || parseContentType(resp.Header.ContentType()).is("text/event-stream") {
		return 0, false
	}
	return n, true
}

// errAnswerLength is an upstream answer whose body is not as long as its
// Content-Length says (it ended before; longer, the stream would not give).
var errAnswerLength = errors.New("upstream answer's body is not the length its Content-Length says")

// readWhole reads the n bytes of resp's body stream into ctx's response
// body (its own pooled buffer: nothing is copied again to relay it) and
// ends the stream, which gives the upstream connection back to the pool
// once the stream has reported its end. On an error ctx's body is empty.
func readWhole(ctx *fasthttp.RequestCtx, resp *fasthttp.Response, n int) error {
	st := resp.BodyStream()
	buf := ctx.Response.SwapBody(nil)
	buf = slices.Grow(buf[:0], n+1) // +1: the read that reports the end has room
	var err error
	for err == nil {
		var k int
		k, err = st.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+k]
		if len(buf) > n {
			err = errAnswerLength // never: the stream ends at Content-Length
		}
	}
	if err == io.EOF && len(buf) == n {
		err = nil
	} else if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = errAnswerLength
	}
	if err != nil {
		buf = buf[:0]
	}
	ctx.Response.SwapBody(buf)
	if cerr := resp.CloseBodyStream(); err == nil {
		err = cerr
	}
	return err
}

// upstreamFailed answers a request the upstream could not be asked: its
// pool busy (503 with Retry-After), its address denied, or the request
// failed.
func (s *Proxy) upstreamFailed(ctx *fasthttp.RequestCtx, err error, dep *event.Deployment, up *upstream) {
	if errors.Is(err, fasthttp.ErrNoFreeConns) {
		// Every pooled connection stayed busy for MaxConnWaitTimeout: the
		// upstream is not down, the edge is at its bound.
		s.metrics.poolFull.Inc()
		ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, "1")
		fail(ctx, errUpstreamBusy, 0)
		return
	}
	// (Declared only here: a pointer given to errors.As escapes, and would
	// be allocated for every request that succeeded too.)
	var denied *upstreamDeniedError
	if errors.As(err, &denied) {
		s.upstreamDenied(dep, up, denied)
		fail(ctx, errUpstreamNotAllowed, 0)
		return
	}
	s.log.Warn("upstream request failed", "deployment", dep.Name, "upstream", up.host, "err", err)
	fail(ctx, errUpstream, 0)
}

// noUpstream answers a request to a deployment that lists no upstream for
// this edge's site (and no "*"): 502 "no upstream configured for site X",
// counted by deployment, and logged once per deployment revision — a
// misconfiguration is worth one line, not one per request.
func (s *Proxy) noUpstream(ctx *fasthttp.RequestCtx, rt *route) {
	s.metrics.noUpstream.WithLabelValues(rt.dep.Name).Inc()
	if prev, loaded := s.noUpstreamLogged.Swap(rt.dep.ID, rt.dep.Revision); !loaded || prev != rt.dep.Revision {
		s.log.Warn("deployment has no upstream for this edge's site and no \"*\" entry; its requests are answered 502",
			"deployment", rt.dep.Name, "site", s.cfg.Site)
	}
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(fasthttp.StatusBadGateway)
	ctx.SetBody(rt.noUpstream)
}

// appendForwardedFor appends the X-Forwarded-For value: every value the
// client sent, if any, then the client's own address.
func appendForwardedFor(dst []byte, h *fasthttp.RequestHeader, client net.Addr) []byte {
	for prior := range fieldValues(h, headerForwardedFor) {
		if prior = bytes.TrimSpace(prior); len(prior) > 0 {
			dst = append(append(dst, prior...), ", "...)
		}
	}
	if ta, ok := client.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap().AppendTo(dst)
	}
	return append(dst, client.String()...)
}

// send forwards req to up and records the upstream's health. The request
// URI is up's scheme, host and port and base path, then r's normalised path
// (escaped so that the upstream, decoding it once, reads that very path) and
// query: never the bytes of the client's request line.
//
// start is when the request began to be forwarded (forward's clock
// reading, taken for picking the upstream: the microsecond of building the
// request in between is nothing on the histogram's millisecond buckets).
func (s *Proxy) send(req *fasthttp.Request, resp *fasthttp.Response, up *upstream, r *request, start time.Time) error {
	if up.denied != nil {
		return up.denied
	}
	var uri [512]byte
	u := append(uri[:0], up.base...)
	u = appendEscapedPath(u, r.path)
	if len(r.query) > 0 {
		u = append(append(u, '?'), r.query...)
	}
	req.SetRequestURIBytes(u)
	req.Header.SetHost(up.host)
	err := s.client.Do(req, resp)
	up.latency.Observe(time.Since(start).Seconds())
	switch {
	case err == nil:
		up.health.succeeded()
	case isConnectError(err):
		up.health.failed(time.Now())
	}
	return err
}

// upstreamBody relays a streamed upstream body; when the edge server closes
// it (relayed, or the client gone), it releases the upstream response and
// finishes the request.
type upstreamBody struct {
	resp    *fasthttp.Response
	r       io.Reader
	streams prometheus.Gauge
	// m, when the request is metered, reads what is relayed; in strip
	// mode it also decides what is (see meter.scan).
	m   *meter
	err error // the upstream's error, in strip mode once read

	// Set by handle: the request to finish on Close.
	s   *Proxy
	ctx *fasthttp.RequestCtx
	out outcome
}

func (b *upstreamBody) Read(p []byte) (int, error) {
	m := b.m
	if m == nil {
		return b.r.Read(p)
	}
	if !m.strip && !m.cut {
		n, err := b.r.Read(p)
		if k := m.feed(p[:n]); m.cut {
			// The budget ended the stream after p[:k], an event's end:
			// the rest is never relayed.
			b.cutStream()
			return k, nil
		}
		if err != nil {
			m.end(false)
		}
		return n, err
	}
	// Strip mode (and a cut stream's end): the upstream's bytes go through
	// m.pend, less the usage-only chunks; a line not yet ended waits in
	// m.carry.
	if m.pendOff == len(m.pend) {
		m.pend, m.pendOff = m.pend[:0], 0
		if b.err != nil {
			return 0, b.err
		}
		n, err := b.r.Read(p)
		m.scan(p[:n], true)
		switch {
		case m.cut:
			b.cutStream() // m.pend ends at an event's end; the last event follows
		case err != nil:
			m.end(true) // a stream cut mid-line: the client gets that line as it came
			b.err = err
		}
		if len(m.pend) == 0 {
			return 0, b.err
		}
	}
	n := copy(p, m.pend[m.pendOff:])
	m.pendOff += n
	return n, nil
}

// upstreamBodies are reused: the server closes a body once, when it is done
// with it, and keeps no reference after.
var upstreamBodies = sync.Pool{New: func() any { return new(upstreamBody) }}

func (b *upstreamBody) Close() error {
	b.streams.Dec()
	err := b.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(b.resp)
	if b.s != nil {
		b.s.finish(b.ctx, &b.out)
	}
	*b = upstreamBody{}
	upstreamBodies.Put(b)
	return err
}

// setUpstreamAuth applies the deployment's upstream_auth mode to h, the
// request about to be forwarded, from which scrubRequest has removed
// every client credential; client is the request as received. It returns
// the refusal when the request cannot be forwarded.
//
//   - none: nothing is added.
//   - inject: the header is set from the edge's secret for this deployment's
//     project (see secretStore); without one, 502.
//   - passthrough: the client's own value of the header goes through — the
//     one value, never one that is or holds a keymesh key; two different
//     values are refused (400) as two credentials.
func (s *Proxy) setUpstreamAuth(h, client *fasthttp.RequestHeader, dep *event.Deployment, r *request) *apierror.Error {
	ua := dep.UpstreamAuth
	if ua == nil || ua.Mode == "" || ua.Mode == event.UpstreamAuthNone {
		if ua != nil && ua.Header != "" {
			h.Del(ua.Header)
		}
		return nil
	}
	header := fasthttp.HeaderAuthorization
	if ua.Header != "" {
		header = ua.Header
	}
	h.Del(header)
	switch ua.Mode {
	case event.UpstreamAuthPassthrough:
		var value []byte
		for _, v := range client.PeekAll(header) {
			if v = bytes.TrimSpace(v); len(v) == 0 {
				continue
			}
			if value != nil && !bytes.Equal(v, value) {
				s.metrics.refused[refusedCredentials].Inc()
				return errConflictingCredentials
			}
			value = v
		}
		if len(value) > 0 && !containsKeyLike(value) && (len(r.cred) == 0 || !bytes.Contains(value, r.cred)) {
			h.SetBytesV(header, value)
		}
	case event.UpstreamAuthInject:
		secret, ok := s.secrets.get(dep.ProjectName, ua.Secret)
		if !ok {
			return errUpstreamAuth
		}
		h.Set(header, ua.Prefix+secret)
	default:
		// A mode this edge does not know: send no credential at all.
	}
	return nil
}
