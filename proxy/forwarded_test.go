package proxy

import (
	"bufio"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
)

// The forwarding headers the upstream reads (who the client is, over which
// scheme, which request) are the edge's, however many copies of each the
// client sends: a second X-Forwarded-For left beside the edge's would put
// the client's own claim last, where an upstream trusting its proxy looks
// for the client's address. Spoken in raw bytes: a client library would
// fold the duplicates.
func TestForwardingHeadersAreTheEdges(t *testing.T) {
	up := newUpstream(t, nil)
	secret, h, key := testKey(t, "key_1", "dep_1")
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{deployment("dep_1", up.URL, true)}, 1),
		keys: map[apikey.Hash]*cache.Key{h: key}}
	p := startProxy(t, st)
	c, err := net.Dial("tcp", strings.TrimPrefix(p.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	body := `{"model":"m","prompt":"hi"}`
	_, err = c.Write([]byte("POST /v1/completions HTTP/1.1\r\nHost: edge.test\r\nContent-Type: application/json\r\n" +
		"X-API-Key: " + secret + "\r\n" +
		"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Request-Id: client-1\r\n" +
		"x-forwarded-for: 10.0.0.2\r\nX-FORWARDED-PROTO: https\r\nx-request-id: client-2\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got := up.requests()
	if len(got) != 1 {
		t.Fatalf("upstream saw %d requests", len(got))
	}
	hd := got[0].header
	if v := hd.Values("X-Forwarded-For"); len(v) != 1 || v[0] != "10.0.0.1, 10.0.0.2, 127.0.0.1" {
		t.Errorf("upstream X-Forwarded-For %q, want one: the client's values, then its address", v)
	}
	if v := hd.Values("X-Forwarded-Proto"); len(v) != 1 || v[0] != "http" {
		t.Errorf("upstream X-Forwarded-Proto %q, want one: http", v)
	}
	if v := hd.Values("X-Request-Id"); len(v) != 1 || v[0] != resp.Header.Get("X-Request-Id") {
		t.Errorf("upstream X-Request-Id %q, answered %q: want that one alone", v, resp.Header.Get("X-Request-Id"))
	}
}
