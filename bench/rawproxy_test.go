package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

// rawUpstream reads requests with net/http's parser (not the proxy's) and
// answers each with answer; it counts its connections and keeps what it
// was sent.
type rawUpstream struct {
	ln     net.Listener
	answer string
	mu     sync.Mutex
	conns  int
	got    []string // method path body, per request
	heads  []http.Header
}

func startRawUpstream(t *testing.T, answer string) *rawUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{ln: ln, answer: answer}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.conns++
			u.mu.Unlock()
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					body, _ := io.ReadAll(req.Body)
					u.mu.Lock()
					u.got = append(u.got, req.Method+" "+req.URL.Path+" "+string(body))
					u.heads = append(u.heads, req.Header)
					u.mu.Unlock()
					a := u.answer
					if req.Method == http.MethodHead {
						a = a[:strings.Index(a, "\r\n\r\n")+4]
					}
					if _, err := io.WriteString(c, a); err != nil {
						return
					}
				}
			}()
		}
	}()
	return u
}

func startRaw(t *testing.T, upstream string) *RawProxy {
	t.Helper()
	p, err := StartRawProxy(upstream, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return p
}

// rawExchange sends raw bytes on a new connection and reads an answer for
// each of methods, the requests' methods in order (several answers on one
// connection: what testutil.RawRequest, which reads one, does not).
func rawExchange(t *testing.T, p *RawProxy, send string, methods ...string) ([]*http.Response, []string) {
	t.Helper()
	c, err := net.Dial("tcp", addrOf(p))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, send); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var resps []*http.Response
	var bodies []string
	for _, m := range methods {
		resp, err := http.ReadResponse(br, &http.Request{Method: m})
		if err != nil {
			t.Fatalf("answer %d: %v", len(resps)+1, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resps, bodies = append(resps, resp), append(bodies, string(b))
	}
	return resps, bodies
}

const rawAnswer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"

func TestRawProxyRelaysKeepAlive(t *testing.T) {
	up := startRawUpstream(t, rawAnswer)
	p := startRaw(t, "http://"+up.ln.Addr().String())
	send := "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n" +
		"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Api-Key: k1\r\ncontent-length: 7\r\n\r\n{\"a\":1}" +
		"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
	// The answer to HEAD has a length and no body: the proxy must not
	// wait for one.
	resps, bodies := rawExchange(t, p, send, "GET", "POST", "HEAD")
	for i, want := range []string{`{"ok":true}`, `{"ok":true}`, ""} {
		if resps[i].StatusCode != 200 || bodies[i] != want {
			t.Errorf("answer %d: %d %q, want 200 %q", i+1, resps[i].StatusCode, bodies[i], want)
		}
	}
	testutil.CheckFor(t, 5*time.Second, 0, func() error {
		up.mu.Lock()
		defer up.mu.Unlock()
		if len(up.got) != 3 {
			return fmt.Errorf("the upstream has %d requests of 3", len(up.got))
		}
		return nil
	})
	up.mu.Lock()
	defer up.mu.Unlock()
	want := []string{"GET /v1/models ", `POST /v1/chat/completions {"a":1}`, "HEAD /health "}
	if strings.Join(up.got, "|") != strings.Join(want, "|") {
		t.Errorf("upstream got %q, want %q", up.got, want)
	}
	if len(up.heads) > 1 && up.heads[1].Get("X-Api-Key") != "k1" {
		t.Errorf("headers not relayed as sent: %v", up.heads[1])
	}
	if up.conns != 1 {
		t.Errorf("%d upstream connections for one client connection, want 1", up.conns)
	}
}

func TestRawProxyRefusesWhatItCannotFrame(t *testing.T) {
	up := startRawUpstream(t, rawAnswer)
	p := startRaw(t, "http://"+up.ln.Addr().String())
	for _, tc := range []struct {
		name, send string
		code       int
	}{
		{"chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 501},
		{"signed length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", 400},
		{"two lengths", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400},
		{"space before colon", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc", 400},
		{"huge head", "GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("a", 4000)+"\r\n", 20) + "\r\n", 431},
		{"huge body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 17000000\r\n\r\n", 413},
	} {
		r, err := testutil.RawRequest(addrOf(p), []byte(tc.send), 10*time.Second)
		// net/http's reader takes Connection out of the header: the raw bytes say it.
		if err != nil || r.Status != tc.code || !bytes.Contains(r.Raw, []byte("\r\nConnection: close\r\n")) {
			t.Errorf("%s: %v, status %d, want %d and the connection closed:\n%s", tc.name, err, r.Status, tc.code, r.Raw)
		}
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	if len(up.got) != 0 {
		t.Errorf("the upstream saw what the proxy refused: %q", up.got)
	}
}

// TestRawProxyAnswersItCannotFrameAre502: an answer without a length, and
// an interim one (a final answer follows it, which the proxy would take
// for the next request's).
func TestRawProxyAnswersItCannotFrameAre502(t *testing.T) {
	for name, answer := range map[string]string{
		"no length": "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nno length",
		"interim":   "HTTP/1.1 100 Continue\r\n\r\n" + rawAnswer,
	} {
		up := startRawUpstream(t, answer)
		p := startRaw(t, "http://"+up.ln.Addr().String())
		r, err := testutil.RawRequest(addrOf(p), []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 10*time.Second)
		if err != nil || r.Status != 502 {
			t.Errorf("%s: %v, status %d, want 502:\n%s", name, err, r.Status, r.Raw)
		}
	}
}

func addrOf(p *RawProxy) string { return strings.TrimPrefix(p.URL(), "http://") }

func TestStartRawProxyValidates(t *testing.T) {
	for _, bad := range []string{"127.0.0.1:1", "https://127.0.0.1:1", "http://127.0.0.1", "http://127.0.0.1:1/path", "http://u@127.0.0.1:1"} {
		if p, err := StartRawProxy(bad, "127.0.0.1:0"); err == nil {
			_ = p.Shutdown(context.Background())
			t.Errorf("%q: want an error", bad)
		}
	}
}

func TestRawProxyShutdownEndsIdleConnections(t *testing.T) {
	up := startRawUpstream(t, rawAnswer)
	p, err := StartRawProxy("http://"+up.ln.Addr().String(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addrOf(p))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with an idle keep-alive connection: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("idle connection after shutdown: %v, want EOF", err)
	}
}
