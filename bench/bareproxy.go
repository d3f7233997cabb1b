package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/valyala/fasthttp"
)

// BareProxy is the smallest fasthttp reverse proxy: it copies the request,
// forwards it to one upstream and streams the answer back — no key check,
// no limits, no audit, no metrics. It is the floor a keymesh edge is built
// on, so a comparison can tell what the edge's own work costs apart from
// what a Go proxy costs at all. Not for production: it strips nothing.
type BareProxy struct {
	srv      *fasthttp.Server
	ln       net.Listener
	upstream string
	client   *fasthttp.Client
}

// StartBareProxy serves a BareProxy to upstream (http://host:port) on addr.
func StartBareProxy(upstream, addr string) (*BareProxy, error) {
	if !strings.HasPrefix(upstream, "http://") {
		return nil, fmt.Errorf("bare proxy: upstream %q: want http://host:port", upstream)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	p := &BareProxy{ln: ln, upstream: strings.TrimRight(upstream, "/"),
		client: &fasthttp.Client{StreamResponseBody: true, MaxConnsPerHost: 1024}}
	p.srv = &fasthttp.Server{Handler: p.handle, NoDefaultServerHeader: true}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// URL is where the proxy listens.
func (p *BareProxy) URL() string { return "http://" + p.ln.Addr().String() }

// Shutdown stops accepting and waits for requests in flight until ctx ends.
func (p *BareProxy) Shutdown(ctx context.Context) error {
	err := p.srv.ShutdownWithContext(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

func (p *BareProxy) handle(ctx *fasthttp.RequestCtx) {
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	ctx.Request.Header.CopyTo(&req.Header)
	req.SetBodyRaw(ctx.Request.Body())
	req.SetRequestURI(p.upstream + string(ctx.Request.RequestURI()))
	resp := fasthttp.AcquireResponse()
	if err := p.client.Do(req, resp); err != nil {
		fasthttp.ReleaseResponse(resp)
		ctx.Error(err.Error(), fasthttp.StatusBadGateway)
		return
	}
	resp.Header.CopyTo(&ctx.Response.Header)
	if resp.BodyStream() != nil {
		ctx.Response.SetBodyStream(releasingBody{resp}, resp.Header.ContentLength())
		return
	}
	ctx.Response.SetBody(resp.Body())
	fasthttp.ReleaseResponse(resp)
}

// releasingBody streams an upstream body and releases its response once
// the server is done with it.
type releasingBody struct{ resp *fasthttp.Response }

func (r releasingBody) Read(b []byte) (int, error) { return r.resp.BodyStream().Read(b) }

func (r releasingBody) Close() error {
	err := r.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(r.resp)
	return err
}
