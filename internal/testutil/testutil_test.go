package testutil

import (
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestCheckForRetriesUntilNil(t *testing.T) {
	var n atomic.Int32
	CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if n.Add(1) < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if got := n.Load(); got != 3 {
		t.Fatalf("f called %d times, want 3", got)
	}
}

func TestRawRequestSendsBytesAsGiven(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 4096)
		n, _ := c.Read(buf)
		got <- string(buf[:n])
		c.Write([]byte("HTTP/1.1 418 I'm a teapot\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok"))
	}()
	req := "GET /a/../b%2f?x HTTP/1.1\r\nHost: h\r\nX_API_Key: k\r\n\r\n"
	resp, err := RawRequest(ln.Addr().String(), []byte(req), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != req {
		t.Fatalf("server read %q, want %q", s, req)
	}
	if resp.Status != 418 || string(resp.Body) != "ok" || resp.Header.Get("X-A") != "b" {
		t.Fatalf("response %d %q %v", resp.Status, resp.Body, resp.Header)
	}
	if !strings.HasPrefix(string(resp.Raw), "HTTP/1.1 418") {
		t.Fatalf("raw %q", resp.Raw)
	}
}
