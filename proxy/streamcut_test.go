package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
	"github.com/keymesh/keymesh/internal/testutil"
)

// sseEvent is one streamed chat chunk of 8 characters: 2 tokens estimated.
const sseEvent = `data: {"choices":[{"index":0,"delta":{"content":"abcdefgh"}}]}` + "\n\n"

// slowStream is a real upstream that streams pieces of an event stream,
// each written and flushed on its own, delay apart, and counts the
// requests whose client went away before the end (the edge closing the
// connection: the request's context is cancelled, or a write fails) and
// those it finished.
type slowStream struct {
	pieces []string
	delay  time.Duration
	// length: send a Content-Length (the whole stream's) rather than
	// chunked.
	length         bool
	gone, finished atomic.Int32
}

func newSlowStream(n int) *slowStream {
	s := &slowStream{delay: time.Millisecond}
	for range n {
		s.pieces = append(s.pieces, sseEvent)
	}
	return s
}

func (s *slowStream) all() string { return strings.Join(s.pieces, "") }

func (s *slowStream) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/event-stream")
	if s.length {
		w.Header().Set("Content-Length", strconv.Itoa(len(s.all())))
	}
	for _, p := range s.pieces {
		if _, err := io.WriteString(w, p); err != nil {
			s.gone.Add(1)
			return
		}
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			s.gone.Add(1)
			return
		case <-time.After(s.delay):
		}
	}
	s.finished.Add(1)
}

// goneIs waits until n requests' clients went away.
func (s *slowStream) goneIs(t *testing.T, n int32) {
	t.Helper()
	testutil.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if g := s.gone.Load(); g != n {
			return fmt.Errorf("the upstream saw %d clients go away, want %d (%d streams finished)", g, n, s.finished.Load())
		}
		return nil
	})
}

// Streamed chat requests: the edge adds include_usage (strip mode), or the
// client asked for it (relayed as it comes).
const (
	streamBody      = `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	streamBodyUsage = `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`
)

// splitEvents splits a received event stream into its events (without
// their blank lines).
func splitEvents(body string) []string {
	body = strings.ReplaceAll(body, "\r\n", "\n")
	return strings.Split(strings.TrimSuffix(body, "\n\n"), "\n\n")
}

// wantCutEnd checks that a stream ends with the error event (parsed as an
// OpenAI SDK does: the data line's JSON, its "error") and [DONE], and
// returns what came before them.
func wantCutEnd(t *testing.T, body string, why reason) string {
	t.Helper()
	tail := string(streamCutEvent(why, false))
	if !strings.HasSuffix(body, tail) {
		t.Fatalf("stream does not end with the cut event: ...%q", body[max(0, len(body)-400):])
	}
	evs := splitEvents(tail)
	if len(evs) != 2 || evs[1] != "data: [DONE]" {
		t.Fatalf("cut end %q", tail)
	}
	var e struct {
		Error *struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Code    string  `json:"code"`
			Param   *string `json:"param"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(strings.TrimPrefix(evs[0], "data: ")), &e); err != nil || e.Error == nil {
		t.Fatalf("error event %q: %v", evs[0], err)
	}
	if e.Error.Type != "insufficient_quota" || e.Error.Code != "insufficient_quota" || e.Error.Message == "" || e.Error.Param != nil {
		t.Fatalf("error event %+v", *e.Error)
	}
	return strings.TrimSuffix(body, tail)
}

// cutRecord waits for the audit record of the cut stream and returns it.
func cutRecord(t *testing.T, tp *testProxy) auditWire {
	t.Helper()
	var rec auditWire
	testutil.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		for _, r := range tp.audit.records(t) {
			if r.Reason == "stream_cut" {
				rec = r
				return nil
			}
		}
		return fmt.Errorf("no stream_cut record")
	})
	return rec
}

// A stream longer than what is left of a bound (tokens_per_day, a token
// quota), with no max_tokens (it reserves nothing): its hold is extended
// as it goes until the bound refuses, then the client gets the error event
// and [DONE] after a whole event, the upstream sees its connection closed,
// and the request is settled with what was relayed — at most the bound
// plus one step — audited, counted, its slots released. Both with the
// edge stripping the usage chunk and with the stream relayed as it came.
func TestStreamCutAtBudget(t *testing.T) {
	const budget = 200
	for _, tc := range []struct {
		name string
		lim  *event.TokenLimits
		why  reason
		body string
	}{
		{"tokens_per_day", &event.TokenLimits{TokensPerDay: budget}, reasonTokenLimit, streamBody},
		{"tokens_per_day/asked_usage", &event.TokenLimits{TokensPerDay: budget}, reasonTokenLimit, streamBodyUsage},
		{"quota", &event.TokenLimits{Quota: &event.Quota{Tokens: budget}}, reasonQuota, streamBody},
		{"quota/asked_usage", &event.TokenLimits{Quota: &event.Quota{Tokens: budget}}, reasonQuota, streamBodyUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newSlowStream(500) // 1,000 tokens
			ts := startTokens(t, tokenBoundsSpec{key: tc.lim}, up.serve)
			resp, body := ts.postBody(t, 0, "/v1/chat/completions", tc.body, nil)
			wantOK(t, resp, body)
			if resp.ContentLength != -1 || len(resp.TransferEncoding) == 0 {
				t.Fatalf("a bound stream is sent chunked: length %d, %v", resp.ContentLength, resp.TransferEncoding)
			}
			relayed := wantCutEnd(t, body, tc.why)
			if !strings.HasPrefix(up.all(), relayed) || !strings.HasSuffix(relayed, "\n\n") {
				t.Fatalf("relayed %q is not whole events of the upstream's", relayed)
			}
			events := strings.Count(relayed, sseEvent)
			up.goneIs(t, 1)
			ts.heldIs(t, 0)
			inFlightIs(t, ts.testProxy, 0)

			rec := cutRecord(t, ts.testProxy)
			if rec.Status != 200 || rec.PromptTokens == nil || rec.CompletionTokens == nil || !rec.Estimated {
				t.Fatalf("record %+v", rec)
			}
			total := *rec.PromptTokens + *rec.CompletionTokens
			if *rec.CompletionTokens != int64(2*events) {
				t.Fatalf("metered %d completion tokens for %d events relayed", *rec.CompletionTokens, events)
			}
			if total > budget+minStreamStep || total < budget-minStreamStep {
				t.Fatalf("metered %d tokens under a budget of %d (step %d)", total, budget, minStreamStep)
			}
			if got := ts.counter(t, "keymesh_edge_streams_cut_total", "reason", reasonNames[tc.why]); got != 1 {
				t.Fatalf("streams cut counted %v", got)
			}
			// The bound is spent: the next request is refused, and what is
			// left says the stream was settled, not its reservation.
			if tc.why == reasonQuota {
				resp, body = ts.postBody(t, 0, "/v1/chat/completions", tc.body, nil)
				wantError(t, resp, body, 429, apierror.InsufficientQuota)
			}
			id := tokenID{"key_1", scopeKey, tokDay}
			limit, refill := int64(budget), ""
			if tc.why == reasonQuota {
				id.kind = tokQuota
			}
			if left := ts.tokens.remaining(id, limit, refill); left != max(0, budget-total) {
				t.Fatalf("%d left after %d used of %d", left, total, budget)
			}
		})
	}
}

// A stream within its reservation is never cut; one past it while the
// bound has room is extended and not cut either; and a whole answer is
// never cut, whatever it used (it settles in debt, as before).
func TestStreamNotCutWithinBudget(t *testing.T) {
	up := newSlowStream(100) // 200 tokens
	handler := func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.Header.Get("X-Whole"), "1") {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"choices":[{"index":0,"message":{"content":"`+strings.Repeat("abcd", 500)+`"}}],"usage":{"prompt_tokens":1,"completion_tokens":500}}`)
			return
		}
		up.serve(w, r)
	}
	ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerDay: 1000}}, handler)

	// Within its reservation (max_tokens 300).
	resp, body := ts.postBody(t, 0, "/v1/chat/completions", `{"model":"m","stream":true,"max_tokens":300,"messages":[{"role":"user","content":"hi"}]}`, nil)
	wantOK(t, resp, body)
	if body != up.all() {
		t.Fatalf("a stream within its reservation was changed: %d bytes of %d", len(body), len(up.all()))
	}
	// Past its reservation (max_tokens 10), with room in the bound.
	resp, body = ts.postBody(t, 0, "/v1/chat/completions", `{"model":"m","stream":true,"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`, nil)
	wantOK(t, resp, body)
	if body != up.all() {
		t.Fatalf("a stream past its reservation with room left was cut: %d bytes of %d", len(body), len(up.all()))
	}
	ts.heldIs(t, 0)
	// Each used 1 + 200: settled exactly, extensions given back.
	if left := ts.tokens.remaining(tokenID{"key_1", scopeKey, tokDay}, 1000, ""); left != 1000-2*201 {
		t.Fatalf("%d left, want %d", left, 1000-2*201)
	}
	// A whole answer of 501 tokens, more than is left: relayed whole.
	resp, body = ts.postBody(t, 0, "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`, map[string]string{"X-Whole": "1"})
	wantOK(t, resp, body)
	if !strings.Contains(body, strings.Repeat("abcd", 500)) {
		t.Fatalf("a whole answer was changed: %q", body)
	}
	if got := ts.counter(t, "keymesh_edge_streams_cut_total", "reason", "token_limit"); got != 0 {
		t.Fatalf("streams cut counted %v", got)
	}
	if up.gone.Load() != 0 || up.finished.Load() != 2 {
		t.Fatalf("upstream: %d gone, %d finished", up.gone.Load(), up.finished.Load())
	}
}

// However the upstream's writes split the events — a data line in pieces,
// its blank line on its own, several events in one write, an event of
// several lines, CRLF line endings — the cut comes at an event's end: what
// the client got before the error event is whole events of the upstream's
// stream, byte for byte.
func TestStreamCutAtEventBoundary(t *testing.T) {
	up := &slowStream{delay: time.Millisecond}
	twoLines := `data: {"choices":[{"index":0,"delta":{"content":"abcd"}}]}` + "\n: a comment\n" +
		`data: {"choices":[{"index":0,"delta":{"content":"efgh"}}]}` + "\n\n"
	crlf := strings.ReplaceAll(sseEvent, "\n", "\r\n")
	for i := range 400 {
		switch i % 4 {
		case 0:
			up.pieces = append(up.pieces, sseEvent[:10], sseEvent[10:len(sseEvent)-1], "\n")
		case 1:
			up.pieces = append(up.pieces, sseEvent+sseEvent+sseEvent[:20], sseEvent[20:])
		case 2:
			up.pieces = append(up.pieces, twoLines[:70], twoLines[70:])
		case 3:
			up.pieces = append(up.pieces, crlf[:len(crlf)-3], crlf[len(crlf)-3:len(crlf)-1], crlf[len(crlf)-1:])
		}
	}
	for _, tc := range []struct{ name, body string }{{"strip", streamBody}, {"asked_usage", streamBodyUsage}} {
		t.Run(tc.name, func(t *testing.T) {
			up.gone.Store(0)
			for _, budget := range []int64{37, 101, 150} {
				ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerDay: budget}}, up.serve)
				resp, body := ts.postBody(t, 0, "/v1/chat/completions", tc.body, nil)
				wantOK(t, resp, body)
				relayed := wantCutEnd(t, body, reasonTokenLimit)
				if !strings.HasPrefix(up.all(), relayed) {
					t.Fatalf("budget %d: relayed %q is not the upstream's stream", budget, relayed)
				}
				if !strings.HasSuffix(relayed, "\n\n") && !strings.HasSuffix(relayed, "\r\n\r\n") {
					t.Fatalf("budget %d: cut inside an event: ...%q", budget, relayed[max(0, len(relayed)-80):])
				}
				ts.heldIs(t, 0)
			}
			up.goneIs(t, 3)
		})
	}
}

// The bytes a client gets of a cut stream, read off the socket: a 200
// event stream, chunked (even though the upstream sent a Content-Length,
// which the cut stream no longer has), whose chunks hold whole events of
// the upstream's, then the error event and [DONE], then the last chunk.
func TestStreamCutRawBytes(t *testing.T) {
	up := newSlowStream(200)
	up.length = true
	ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerDay: 100}}, up.serve)
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		ts.secrets[0], len(streamBody), streamBody)
	raw, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	head, rest, ok := bytes.Cut(raw, []byte("\r\n\r\n"))
	if !ok || !bytes.HasPrefix(head, []byte("HTTP/1.1 200 OK\r\n")) {
		t.Fatalf("answer %q", raw)
	}
	h := strings.ToLower(string(head))
	if !strings.Contains(h, "\r\ntransfer-encoding: chunked") || strings.Contains(h, "content-length") ||
		!strings.Contains(h, "\r\ncontent-type: text/event-stream") {
		t.Fatalf("header %q", head)
	}
	// Decode the chunks strictly: size line, data, CRLF; a last chunk of 0
	// and nothing after it.
	var body []byte
	br := bufio.NewReader(bytes.NewReader(rest))
	for {
		line, err := br.ReadString('\n')
		if err != nil || !strings.HasSuffix(line, "\r\n") {
			t.Fatalf("chunk size line %q: %v", line, err)
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(line, "\r\n"), 16, 64)
		if err != nil {
			t.Fatalf("chunk size %q", line)
		}
		if n == 0 {
			if end, _ := io.ReadAll(br); string(end) != "\r\n" {
				t.Fatalf("after the last chunk %q", end)
			}
			break
		}
		chunk := make([]byte, n+2)
		if _, err := io.ReadFull(br, chunk); err != nil || !bytes.HasSuffix(chunk, []byte("\r\n")) {
			t.Fatalf("chunk %q: %v", chunk, err)
		}
		body = append(body, chunk[:n]...)
	}
	relayed := wantCutEnd(t, string(body), reasonTokenLimit)
	if n := strings.Count(relayed, sseEvent); relayed != strings.Repeat(sseEvent, n) || n < 40 || n > 60 {
		t.Fatalf("relayed %d events: %q", n, relayed)
	}
	up.goneIs(t, 1)
	ts.heldIs(t, 0)
	inFlightIs(t, ts.testProxy, 0)
}

// extend takes from every counter a hold took tokens from, or from none:
// a bucket or quota without room refuses it (naming its kind) and leaves
// the others as they were; request quotas do not grow; settlement gives
// back what the extensions took too; a quota whose period turned since
// admission counts the request in the new one.
func TestTokenExtend(t *testing.T) {
	clock := &testClock{t: time.Date(2030, 5, 31, 23, 59, 59, 0, time.UTC)}
	tt := newTokenTable(clock.now, 1000)
	bounds := []tokenBound{
		{"k", scopeKey, &event.TokenLimits{TokensPerMinute: 1000, Quota: &event.Quota{Requests: 10}}},
		{"d", scopeDeployment, &event.TokenLimits{TokensPerDay: 100}},
		{"p", scopeProject, &event.TokenLimits{Quota: &event.Quota{Tokens: 500, Refill: event.QuotaRefillDaily}}},
	}
	left := func() [4]int64 {
		return [4]int64{tt.remaining(tokenID{"k", scopeKey, tokMinute}, 1000, ""),
			tt.remaining(tokenID{"k", scopeKey, tokRequests}, 10, ""),
			tt.remaining(tokenID{"d", scopeDeployment, tokDay}, 100, ""),
			tt.remaining(tokenID{"p", scopeProject, tokQuota}, 500, event.QuotaRefillDaily)}
	}
	want := func(w [4]int64) {
		t.Helper()
		if got := left(); got != w {
			t.Fatalf("left %v, want %v", got, w)
		}
	}
	h, tr := tt.reserve(bounds, 50)
	if h == nil {
		t.Fatalf("refused: %+v", tr)
	}
	want([4]int64{950, 9, 50, 450})
	if why, _, ok := tt.extend(h, 40); !ok || why != reasonNone || h.covered != 90 {
		t.Fatalf("extend 40: %v %v, covers %d", why, ok, h.covered)
	}
	want([4]int64{910, 9, 10, 410})
	if why, _, ok := tt.extend(h, 20); ok || why != reasonTokenLimit || h.covered != 90 {
		t.Fatalf("extend 20 past the day's bucket: %v %v", why, ok)
	}
	want([4]int64{910, 9, 10, 410}) // all or none
	if _, _, ok := tt.extend(h, 10); !ok {
		t.Fatal("extend 10 refused")
	}
	want([4]int64{900, 9, 0, 400})
	tt.settle(h, 30)
	want([4]int64{970, 9, 70, 470})

	// A quota refuses with its reason.
	h, _ = tt.reserve(bounds[2:], 400)
	if why, _, ok := tt.extend(h, 71); ok || why != reasonQuota {
		t.Fatalf("extend past the quota: %v %v", why, ok)
	}
	tt.cancel(h)

	// The day turns while a stream runs: its extension and settlement
	// count in the new day, the old day's reservation is forgotten.
	h, _ = tt.reserve(bounds[2:], 50)
	clock.advance(2 * time.Second) // the minute's bucket is full again
	want([4]int64{1000, 9, 70, 500})
	if _, _, ok := tt.extend(h, 30); !ok {
		t.Fatal("extend in the new day refused")
	}
	want([4]int64{1000, 9, 70, 470})
	tt.settle(h, 90)
	want([4]int64{1000, 9, 70, 410})
	if n := tt.heldTotal(); n != 0 {
		t.Fatalf("%d held", n)
	}
}

// Across edges (global.go), an extension is checked like an admission: a
// stream's hold at one edge is not extended past what the others have
// reported using, though this edge's own counter has room.
func TestTokenExtendGlobal(t *testing.T) {
	es := newEdges(t, 2, nil)
	bounds := []tokenBound{{"k", scopeKey, &event.TokenLimits{TokensPerDay: 1000}}}
	h2, _ := es.ps[1].tokens.reserve(bounds, 900)
	es.ps[1].tokens.settle(h2, 900)
	es.sync(t, true)
	h1, tr := es.ps[0].tokens.reserve(bounds, 0)
	if h1 == nil {
		t.Fatalf("refused: %+v", tr)
	}
	if why, _, ok := es.ps[0].tokens.extend(h1, 200); ok || why != reasonTokenLimit {
		t.Fatalf("extend past the global room: %v %v", why, ok)
	}
	// Counted as admission's refusals are.
	if n := es.counterSum(t, "keymesh_edge_limit_global_refusals_total"); n != 1 {
		t.Fatalf("%v refusals across edges counted, want 1", n)
	}
	if why, _, ok := es.ps[0].tokens.extend(h1, 30); !ok {
		t.Fatalf("extend within the global room refused: %v", why)
	}
	es.ps[0].tokens.settle(h1, 30)
	if left := es.ps[0].tokens.remaining(tokenID{"k", scopeKey, tokDay}, 1000, ""); left != 970 {
		t.Fatalf("edge 1's own counter has %d left, want 970", left)
	}
}
