package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

func TestBodyAndPromptLimits(t *testing.T) {
	s := newStack(t)
	d := s.deployment("small", map[string]any{"max_body_bytes": 4096, "max_prompt_chars": 20})
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})
	h := withKey(k)

	// Declared length over the limit: refused from the header alone.
	big := `{"model": "m", "prompt": "` + strings.Repeat("a", 1<<20) + `"}`
	st, body := send(t, e, http.MethodPost, "/v1/completions", h, big)
	if st != http.StatusRequestEntityTooLarge || errorCode(t, body) != "VALIDATION_ERROR" {
		t.Fatalf("large body: %d %s", st, body)
	}
	// Chunked, no declared length: refused once the limit is passed.
	req, _ := http.NewRequest(http.MethodPost, "http://"+e.Addr()+"/v1/completions",
		io.MultiReader(strings.NewReader(big[:3000]), strings.NewReader(big[3000:])))
	req.ContentLength = -1
	req.Header.Set("X-API-Key", k.Secret)
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("chunked large body: %d", resp.StatusCode)
		}
	} // else: the edge closed the connection mid-upload, also a refusal

	long := `{"model": "m", "messages": [{"role": "user", "content": "` + strings.Repeat("é", 21) + `"}]}`
	st, body = send(t, e, http.MethodPost, "/v1/chat/completions", h, long)
	if st != http.StatusBadRequest || errorCode(t, body) != "VALIDATION_ERROR" || !strings.Contains(body, "max_prompt_chars") {
		t.Fatalf("long prompt: %d %s", st, body)
	}
	st, body = send(t, e, http.MethodPost, "/v1/chat/completions", h, `{"model": "m", "messages": [`)
	if st != http.StatusBadRequest || errorCode(t, body) != "VALIDATION_ERROR" {
		t.Fatalf("bad JSON: %d %s", st, body)
	}
	exact := `{"model": "m", "messages": [{"role": "user", "content": "` + strings.Repeat("é", 20) + `"}]}`
	if st, body := send(t, e, http.MethodPost, "/v1/chat/completions", h, exact); st != http.StatusOK {
		t.Fatalf("prompt at the limit: %d %s", st, body)
	}
}

// An oversized body is refused on its declared length, before the edge reads
// it: the client has sent only the headers when the answer comes.
func TestOversizedBodyRefusedBeforeReading(t *testing.T) {
	s := newStack(t)
	d := s.deployment("small", map[string]any{"max_body_bytes": 4096})
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})
	c, err := net.Dial("tcp", e.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{\"prompt\":\"",
		k.Secret, 100<<20)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a bound on failure, not a timing assertion
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer before the body was sent: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || resp.Header.Get("X-Request-Id") == "" {
		t.Fatalf("status %d, request id %q", resp.StatusCode, resp.Header.Get("X-Request-Id"))
	}
	// Refused before the handler ran, and still counted and audited.
	rec := httptest.NewRecorder()
	e.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if !strings.Contains(rec.Body.String(), `keymesh_edge_requests_total{code="413",deployment="small"} 1`) {
		t.Errorf("the 413 is not counted:\n%s", rec.Body.String())
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		recs, _ := s.auditRecords("deployment=" + d.ID + "&source=edge")
		if len(recs) != 1 || recs[0]["status"] != float64(413) || recs[0]["request_id"] != resp.Header.Get("X-Request-Id") ||
			recs[0]["reason"] != "too_large" {
			return errorf("audit records %v", recs)
		}
		return nil
	})
}

// A client that uploads its whole oversized body before reading — as most
// HTTP clients do — still reads the 413: the edge drains the refused upload
// briefly instead of resetting the connection under the answer.
func TestRefusedUploadStillGetsItsAnswer(t *testing.T) {
	s := newStack(t)
	d := s.deployment("small", map[string]any{"max_body_bytes": 4096})
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})
	body := strings.Repeat("a", 1<<20)
	for i := range 5 {
		c, err := net.Dial("tcp", e.Addr())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second)) // a bound on failure, not a timing assertion
		fmt.Fprintf(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
			k.Secret, len(body))
		if _, err := io.WriteString(c, body); err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("upload %d: no answer: %v", i, err)
		}
		resp.Body.Close()
		c.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("upload %d: status %d", i, resp.StatusCode)
		}
	}
}
