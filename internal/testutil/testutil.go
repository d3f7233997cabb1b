// Package testutil holds the scaffolding keymesh's tests share: a deadline
// poller instead of sleeps, a buffer safe to write from a logger's goroutine
// while the test reads it, and a raw HTTP/1.1 client that sends exactly the
// bytes a test gives it — for attacks a well-behaved client library would
// normalise away.
//
// It is imported only by _test.go files.
package testutil

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// CheckFor calls f every step until it returns nil, and fails the test with
// f's last error when total has passed. It is the only way a test should wait
// for something asynchronous: never a bare sleep.
func CheckFor(t testing.TB, total, step time.Duration, f func() error) {
	t.Helper()
	if step <= 0 {
		step = 5 * time.Millisecond
	}
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %v: %v", total, err)
		}
		time.Sleep(step)
	}
}

// Buffer is a bytes.Buffer safe for concurrent use: loggers write to it from
// their goroutines while the test reads.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// Bytes returns a copy of what has been written.
func (s *Buffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// String returns what has been written.
func (s *Buffer) String() string { return string(s.Bytes()) }

// Len returns how many bytes have been written.
func (s *Buffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Len()
}

// RawResponse is what RawRequest read back.
type RawResponse struct {
	Status int
	Header http.Header
	Body   []byte
	// Raw is every byte the server sent before the connection was closed or
	// the response ended.
	Raw []byte
}

// RawRequest writes req to addr byte for byte (no normalisation of the
// request line, headers or body), reads one HTTP/1.1 response and returns it.
// A server that closes the connection without answering gives Status 0 and
// the error.
func RawRequest(addr string, req []byte, timeout time.Duration) (*RawResponse, error) {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(req); err != nil {
		return nil, fmt.Errorf("writing request: %w", err)
	}
	var raw bytes.Buffer
	br := bufio.NewReader(io.TeeReader(c, &raw))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return &RawResponse{Raw: raw.Bytes()}, fmt.Errorf("reading response: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	out := &RawResponse{Status: resp.StatusCode, Header: resp.Header, Body: body, Raw: raw.Bytes()}
	if err != nil {
		return out, fmt.Errorf("reading body: %w", err)
	}
	return out, nil
}
