package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/event"
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

// stripRequestHopByHop and stripResponseHopByHop look for a hop-by-hop
// header in one pass first: most messages carry none, and deleting each
// possible name is a scan of its own. (Ranging over the concrete type's
// headers allocates nothing; through an interface it would.)
func stripRequestHopByHop(h *fasthttp.RequestHeader) {
	for k := range h.All() {
		if isHopByHop(k) {
			stripHopByHop(h)
			return
		}
	}
}

func stripResponseHopByHop(h *fasthttp.ResponseHeader) {
	for k := range h.All() {
		if isHopByHop(k) {
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

// isHopByHop reports whether k (any letter case) is one of hopByHop.
func isHopByHop(k []byte) bool {
	for _, name := range hopByHopBytes {
		if len(name) == len(k) && bytes.EqualFold(k, name) {
			return true
		}
	}
	return false
}

// forward sends the request to one of the route's upstreams and relays the
// answer; a streamed answer is relayed chunk by chunk as it arrives, and is
// returned (nil otherwise) so that the request is finished once it is.
func (s *Server) forward(ctx *fasthttp.RequestCtx, rt *route, cred []byte, fromAuth bool, lim limitResult) *upstreamBody {
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
	req.SetBodyRaw(ctx.Request.Body()) // ctx outlives the upstream call that reads it
	stripRequestHopByHop(&req.Header)
	if !s.setUpstreamAuth(&req.Header, rt.dep, cred, fromAuth) {
		fail(ctx, errUpstreamAuth, 0)
		return nil
	}
	var xff [256]byte
	req.Header.SetBytesV(fasthttp.HeaderXForwardedFor, appendForwardedFor(xff[:0], req.Header.Peek(fasthttp.HeaderXForwardedFor), ctx.RemoteAddr()))
	if ctx.IsTLS() {
		req.Header.Set(fasthttp.HeaderXForwardedProto, "https")
	} else {
		req.Header.Set(fasthttp.HeaderXForwardedProto, "http")
	}

	resp := fasthttp.AcquireResponse()
	err := s.send(ctx, req, resp, up)
	if err != nil && isConnectError(err) {
		// The request never left: another upstream may take it.
		if alt := rt.pick(now, up); alt != nil && alt != up {
			up = alt
			err = s.send(ctx, req, resp, up)
		}
	}
	if errors.Is(err, fasthttp.ErrNoFreeConns) {
		// Every pooled connection stayed busy for MaxConnWaitTimeout: the
		// upstream is not down, the edge is at its bound.
		fasthttp.ReleaseResponse(resp)
		s.metrics.poolFull.Inc()
		ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, "1")
		fail(ctx, errUpstreamBusy, 0)
		return nil
	}
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		s.log.Warn("upstream request failed", "deployment", rt.dep.Name, "upstream", up.host, "err", err)
		fail(ctx, errUpstream, 0)
		return nil
	}

	resp.Header.CopyTo(&ctx.Response.Header)
	stripResponseHopByHop(&ctx.Response.Header)
	// serve put the request's id on the request too.
	ctx.Response.Header.SetBytesKV(headerRequestID, ctx.Request.Header.PeekBytes(headerRequestID))
	lim.setHeaders(&ctx.Response.Header)
	s.cors.apply(ctx) // the upstream's headers replaced ours
	if body := resp.BodyStream(); body != nil {
		// The server closes the stream when it is done writing or the
		// client went away; closing it ends the upstream request.
		s.metrics.streams.Inc()
		b := &upstreamBody{resp: resp, r: body, streams: s.metrics.streams}
		ctx.Response.SetBodyStream(b, resp.Header.ContentLength())
		return b
	}
	ctx.Response.SetBody(resp.Body())
	fasthttp.ReleaseResponse(resp)
	return nil
}

// appendForwardedFor appends the X-Forwarded-For value: what the client
// sent, if anything, then the client's own address.
func appendForwardedFor(dst, prior []byte, client net.Addr) []byte {
	if len(prior) > 0 {
		dst = append(append(dst, prior...), ", "...)
	}
	if ta, ok := client.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap().AppendTo(dst)
	}
	return append(dst, client.String()...)
}

// send forwards req to up and records the upstream's health.
func (s *Server) send(ctx *fasthttp.RequestCtx, req *fasthttp.Request, resp *fasthttp.Response, up *upstream) error {
	var uri [512]byte
	req.SetRequestURIBytes(append(append(uri[:0], up.base...), ctx.Request.RequestURI()...))
	req.Header.SetHost(up.host)
	start := time.Now()
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

	// Set by handle: the request to finish on Close.
	s   *Server
	ctx *fasthttp.RequestCtx
	out outcome
}

func (b *upstreamBody) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *upstreamBody) Close() error {
	b.streams.Dec()
	err := b.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(b.resp)
	if b.s != nil {
		b.s.finish(b.ctx, &b.out)
	}
	return err
}

// setUpstreamAuth removes the client's keymesh key and applies the
// deployment's upstream_auth mode. It reports false when inject is asked for
// and the edge has no such secret.
func (s *Server) setUpstreamAuth(h *fasthttp.RequestHeader, dep *event.Deployment, cred []byte, fromAuth bool) bool {
	h.DelBytes(headerAPIKey)
	if fromAuth {
		h.Del(fasthttp.HeaderAuthorization)
	}
	ua := dep.UpstreamAuth
	mode := event.UpstreamAuthNone
	if ua != nil && ua.Mode != "" {
		mode = ua.Mode
	}
	header := fasthttp.HeaderAuthorization
	if ua != nil && ua.Header != "" {
		header = ua.Header
	}
	switch mode {
	case event.UpstreamAuthPassthrough:
		// The client's own credential for the upstream goes through, unless
		// it is the keymesh key under another name.
		if len(cred) > 0 && bytes.Contains(h.Peek(header), cred) {
			h.Del(header)
		}
	case event.UpstreamAuthInject:
		secret, ok := s.secrets.get(ua.Secret)
		if !ok {
			return false
		}
		h.Set(header, ua.Prefix+secret)
	default:
		h.Del(fasthttp.HeaderAuthorization)
		h.Del(header)
	}
	return true
}
