package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/bench"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/testutil"
)

// Metering on the request path: a Proxy with a UsageSink in front of an
// upstream that answers as vLLM does (include_usage honoured).

// memoryUsage is a UsageSink that keeps a copy of every record.
type memoryUsage struct {
	mu   sync.Mutex
	recs []event.Usage
}

func (s *memoryUsage) Usage(u *event.Usage) {
	s.mu.Lock()
	s.recs = append(s.recs, *u)
	s.mu.Unlock()
}

func (s *memoryUsage) wait(t *testing.T, n int) []event.Usage {
	t.Helper()
	testutil.CheckFor(t, 3*time.Second, time.Millisecond, func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.recs) < n {
			return fmt.Errorf("%d usage records, want %d", len(s.recs), n)
		}
		return nil
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]event.Usage(nil), s.recs...)
}

// vllmStream is what the fake upstream streams for a chat request: two
// content chunks, the usage chunk when asked, [DONE].
func vllmStream(includeUsage bool) string {
	s := chatChunk1 + chatChunk2
	if includeUsage {
		s += chatUsage
	}
	return s + sseDoneLine
}

// vllmLike answers like vLLM: JSON with usage, or a stream with the usage
// chunk only when stream_options.include_usage is true. hold, if not nil,
// is waited on after the first chunk (for streams the client abandons).
func vllmLike(hold chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Stream        bool `json:"stream"`
			StreamOptions *struct {
				IncludeUsage bool `json:"include_usage"`
			} `json:"stream_options"`
		}
		body, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(body, &req)
		if !req.Stream {
			w.Header().Set("Content-Type", "application/json")
			switch {
			case strings.HasSuffix(r.URL.Path, "/embeddings"):
				_, _ = io.WriteString(w, `{"object":"list","data":[{"embedding":[0.5]}],"usage":{"prompt_tokens":6,"total_tokens":6}}`)
			case strings.HasSuffix(r.URL.Path, "/responses"):
				_, _ = io.WriteString(w, `{"object":"response","output":[{"content":[{"text":"hi"}]}],"usage":{"input_tokens":7,"input_tokens_details":{"cached_tokens":2},"output_tokens":5,"total_tokens":12}}`)
			case strings.HasSuffix(r.URL.Path, "/generate"):
				_, _ = io.WriteString(w, `{"generated_text":"abc","details":{"finish_reason":"length","generated_tokens":3,"prefill":[{"id":1,"text":"a"},{"id":2,"text":"b"}]}}`)
			default:
				_, _ = io.WriteString(w, `{"object":"chat.completion","choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11,"prompt_tokens_details":{"cached_tokens":3}}}`)
			}
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		if strings.HasSuffix(r.URL.Path, "/responses") {
			_, _ = io.WriteString(w, "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n"+
				"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":8,\"output_tokens\":4,\"input_tokens_details\":{\"cached_tokens\":1}}}}\n\n")
			return
		}
		_, _ = io.WriteString(w, chatChunk1)
		w.(http.Flusher).Flush()
		if hold != nil {
			select {
			case <-hold:
			case <-r.Context().Done():
				return
			}
		}
		rest := strings.TrimPrefix(vllmStream(req.StreamOptions != nil && req.StreamOptions.IncludeUsage), chatChunk1)
		// Written in small pieces: the edge must read lines split across reads.
		for len(rest) > 0 {
			n := min(7, len(rest))
			_, _ = io.WriteString(w, rest[:n])
			w.(http.Flusher).Flush()
			rest = rest[n:]
		}
	}
}

type meterSetup struct {
	*testProxy
	up     *testUpstream
	usage  *memoryUsage
	secret string
}

func startMetered(t *testing.T, h http.HandlerFunc, withSink bool, mutate ...func(*Config)) *meterSetup {
	t.Helper()
	up := newUpstream(t, h)
	secret, hash, key := testKey(t, "key_1", "dep_1")
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{deployment("dep_1", up.URL, true)}, 1),
		keys: map[apikey.Hash]*cache.Key{hash: key}}
	ms := &meterSetup{up: up, usage: &memoryUsage{}, secret: secret}
	ms.testProxy = startProxyConfig(t, st, func(c *Config) {
		if withSink {
			c.Usage = ms.usage
		}
		for _, f := range mutate {
			f(c)
		}
	})
	return ms
}

func (ms *meterSetup) post(t *testing.T, path, body string) (*http.Response, string) {
	t.Helper()
	return do(t, client(t), "POST", ms.url+path, body, map[string]string{"X-API-Key": ms.secret, "Content-Type": "application/json"})
}

func wantUsage(t *testing.T, u event.Usage, prompt, completion, cached int64, estimated bool) {
	t.Helper()
	if u.PromptTokens != prompt || u.CompletionTokens != completion || u.CachedTokens != cached || u.Estimated != estimated {
		t.Fatalf("usage %+v, want %d/%d/%d estimated %v", u, prompt, completion, cached, estimated)
	}
}

// Non-streamed answers of each shape are metered exactly, into the sink,
// the audit record and keymesh_edge_tokens_total.
func TestMeterHandlerJSON(t *testing.T) {
	ms := startMetered(t, vllmLike(nil), true)
	for i, tt := range []struct {
		path, body string
		p, c, k    int64
	}{
		{"/v1/chat/completions", `{"model":"llama","messages":[{"role":"user","content":"hi"}]}`, 9, 2, 3},
		{"/v1/embeddings", `{"model":"emb","input":"hello"}`, 6, 0, 0},
		{"/v1/responses", `{"model":"r","input":"hello"}`, 7, 5, 2},
		{"/generate", `{"inputs":"hello","parameters":{"decoder_input_details":true}}`, 2, 3, 0},
	} {
		resp, _ := ms.post(t, tt.path, tt.body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", tt.path, resp.StatusCode)
		}
		recs := ms.usage.wait(t, i+1)
		u := recs[i]
		wantUsage(t, u, tt.p, tt.c, tt.k, false)
		if u.Edge != "edge-1" || u.KeyID != "key_1" || u.Project != "prj_1" || u.Deployment != "dep_1" || u.Status != 200 ||
			u.Time.IsZero() || !strings.HasPrefix(u.ID, "edge-1-") || len(u.ID) != len("edge-1-")+requestIDLen {
			t.Fatalf("record %+v", u)
		}
		if got := ms.up.requests()[i].body; got != tt.body {
			t.Fatalf("a non-streamed body was rewritten: %s", got)
		}
	}
	recs := ms.usage.wait(t, 4)
	if recs[0].Model != "llama" || recs[1].Model != "emb" || recs[0].ID == recs[1].ID {
		t.Fatalf("records %+v", recs[:2])
	}
	audits := ms.audit.records(t)
	if len(audits) != 4 || *audits[0].PromptTokens != 9 || *audits[0].CompletionTokens != 2 || audits[0].Estimated {
		t.Fatalf("audit %+v", audits)
	}
	if n := ms.counter(t, "keymesh_edge_tokens_total", "kind", "prompt"); n != 9+6+7+2 {
		t.Fatalf("%v prompt tokens counted", n)
	}
	if n := ms.counter(t, "keymesh_edge_tokens_total", "kind", "cached"); n != 5 {
		t.Fatalf("%v cached tokens counted", n)
	}
	// A GET is no inference call: not metered.
	do(t, client(t), "GET", ms.url+"/v1/models", "", map[string]string{"X-API-Key": ms.secret})
	testutil.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if n := len(ms.audit.records(t)); n != 5 {
			return fmt.Errorf("%d audit records", n)
		}
		return nil
	})
	if n := len(ms.usage.wait(t, 4)); n != 4 {
		t.Fatalf("%d usage records after a GET", n)
	}
}

// A client that asks for usage itself gets the upstream's stream byte for
// byte, and its body goes upstream as sent.
func TestMeterHandlerStreamAskedUsage(t *testing.T) {
	ms := startMetered(t, vllmLike(nil), true)
	body := `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`
	resp, got := ms.post(t, "/v1/chat/completions", body)
	if resp.StatusCode != 200 || got != vllmStream(true) {
		t.Fatalf("status %d, client got %q", resp.StatusCode, got)
	}
	if up := ms.up.requests()[0].body; up != body {
		t.Fatalf("upstream got %s", up)
	}
	if ae := ms.up.requests()[0].header.Get("Accept-Encoding"); ae != "gzip" { // Go's client asks for gzip
		t.Fatalf("Accept-Encoding %q upstream", ae)
	}
	wantUsage(t, ms.usage.wait(t, 1)[0], 11, 3, 4, false)
}

// A client that did not ask for usage gets exactly the stream it would
// have had (no usage chunk), while the edge asked the upstream for usage
// and meters it exactly.
func TestMeterHandlerStreamAddedUsage(t *testing.T) {
	ms := startMetered(t, vllmLike(nil), true)
	for i, tt := range []struct{ body, upstream string }{
		{`{"model":"m","stream":true,"messages":[]}`, `{"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}`},
		{`{"stream":true,"stream_options":{"continuous_usage_stats":false}}`, `{"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":false}}`},
		{`{"stream":true,"stream_options":{"include_usage":false}}`, `{"stream":true,"stream_options":{"include_usage":true}}`},
	} {
		resp, got := ms.post(t, "/v1/chat/completions", tt.body)
		if resp.StatusCode != 200 || got != vllmStream(false) {
			t.Fatalf("%s: status %d, client got %q", tt.body, resp.StatusCode, got)
		}
		if up := ms.up.requests()[i].body; up != tt.upstream {
			t.Fatalf("upstream got %s, want %s", up, tt.upstream)
		}
		// The edge reads the stream it strips: it comes unencoded.
		if ae := ms.up.requests()[i].header.Get("Accept-Encoding"); ae != "" {
			t.Fatalf("Accept-Encoding %q forwarded", ae)
		}
		wantUsage(t, ms.usage.wait(t, i+1)[i], 11, 3, 4, false)
	}
	// Without a sink nothing is rewritten.
	plain := startMetered(t, vllmLike(nil), false)
	body := `{"stream":true}`
	if _, got := plain.post(t, "/v1/chat/completions", body); got != vllmStream(false) || plain.up.requests()[0].body != body {
		t.Fatalf("without a sink: client got %q, upstream %s", got, plain.up.requests()[0].body)
	}
}

// An ambiguous stream_options is forwarded as it came, and the stream
// relayed as the upstream sent it: metered from its usage if it reports
// one (this upstream, like Go's encoding/json, reads keys in any case and
// the last of repeated ones), else estimated.
func TestMeterHandlerAmbiguousStreamOptions(t *testing.T) {
	ms := startMetered(t, vllmLike(nil), true)
	for i, tt := range []struct {
		body      string
		upstream  string
		p, c, k   int64
		estimated bool
	}{
		{`{"stream":true,"Stream_Options":{"include_usage":true}}`, vllmStream(true), 11, 3, 4, false},
		// 8 prompt characters; "Hello world!" is 12 characters relayed.
		{`{"stream":true,"stream_options":{"include_usage":true},"stream_options":{"include_usage":false},"messages":[{"role":"user","content":"abcdefgh"}]}`,
			vllmStream(false), 2, 3, 0, true},
	} {
		_, got := ms.post(t, "/v1/chat/completions", tt.body)
		if up := ms.up.requests()[i].body; up != tt.body {
			t.Fatalf("upstream got %s", up)
		}
		if got != tt.upstream {
			t.Fatalf("client got %q", got)
		}
		wantUsage(t, ms.usage.wait(t, i+1)[i], tt.p, tt.c, tt.k, tt.estimated)
	}
	if a := ms.audit.records(t); len(a) != 2 || a[0].Estimated || !a[1].Estimated {
		t.Fatalf("audit %+v", a)
	}
}

// The Responses API's stream is metered from response.completed.
func TestMeterHandlerResponsesStream(t *testing.T) {
	ms := startMetered(t, vllmLike(nil), true)
	body := `{"model":"m","stream":true,"input":"hello"}`
	_, got := ms.post(t, "/v1/responses", body)
	if !strings.Contains(got, "response.completed") || ms.up.requests()[0].body != body {
		t.Fatalf("client got %q, upstream %s", got, ms.up.requests()[0].body)
	}
	wantUsage(t, ms.usage.wait(t, 1)[0], 8, 4, 1, false)
}

// A stream the client abandons is metered from what was relayed, and
// marked estimated.
func TestMeterHandlerAbortedStream(t *testing.T) {
	ms := startMetered(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for r.Context().Err() == nil { // a generation that never ends
			if _, err := io.WriteString(w, chatChunk1); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(5 * time.Millisecond)
		}
	}, true)
	req, _ := http.NewRequest("POST", ms.url+"/v1/chat/completions",
		strings.NewReader(`{"stream":true,"messages":[{"role":"user","content":"abcdefghijkl"}]}`))
	req.Header.Set("X-API-Key", ms.secret)
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != strings.TrimSuffix(chatChunk1, "\n") {
		t.Fatalf("first line %q: %v", line, err)
	}
	resp.Body.Close() // the client goes away mid-stream
	u := ms.usage.wait(t, 1)[0]
	// 12 prompt characters; "Hello" (2 tokens) per chunk relayed.
	if u.PromptTokens != 3 || u.CompletionTokens < 2 || !u.Estimated || u.Status != 200 {
		t.Fatalf("usage %+v", u)
	}
}

// A stream the upstream stops sending is cut at the idle timeout, and
// metered from what was relayed.
func TestMeterHandlerIdleCut(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	ms := startMetered(t, vllmLike(hold), true, func(c *Config) { c.UpstreamIdleTimeout = 200 * time.Millisecond })
	req, _ := http.NewRequest("POST", ms.url+"/v1/chat/completions",
		strings.NewReader(`{"stream":true,"messages":[{"role":"user","content":"abcdefghijkl"}]}`))
	req.Header.Set("X-API-Key", ms.secret)
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body) // cut: the read ends in an error
	resp.Body.Close()
	if resp.StatusCode != 200 || string(got) != chatChunk1 {
		t.Fatalf("status %d, client got %q", resp.StatusCode, got)
	}
	wantUsage(t, ms.usage.wait(t, 1)[0], 3, 2, 0, true)
}

// A stream the upstream cuts is metered from what was relayed too, and the
// client gets every byte that was relayed.
func TestMeterHandlerUpstreamCut(t *testing.T) {
	ms := startMetered(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, chatChunk1+`data: {"choices":[{"delta":{"content":"abc`)
		w.(http.Flusher).Flush()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	}, true)
	req, _ := http.NewRequest("POST", ms.url+"/v1/chat/completions", strings.NewReader(`{"stream":true,"prompt":"abcd"}`))
	req.Header.Set("X-API-Key", ms.secret)
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(got), chatChunk1) {
		t.Fatalf("client got %q", got)
	}
	wantUsage(t, ms.usage.wait(t, 1)[0], 1, 2, 0, true)
}

// In front of the mock upstream of bench (what e2e and make test-client
// use): the usage it reports reaches the sink, and its usage chunk reaches
// the client only when the client asked for it.
func TestMeterHandlerMockUpstream(t *testing.T) {
	mock, err := bench.StartUpstream(bench.UpstreamConfig{ChunkInterval: time.Millisecond}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mock.Shutdown(context.Background()) })
	secret, hash, key := testKey(t, "key_1", "dep_1")
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{deployment("dep_1", mock.URL(), true)}, 1),
		keys: map[apikey.Hash]*cache.Key{hash: key}}
	usage := &memoryUsage{}
	p := startProxyConfig(t, st, func(c *Config) { c.Usage = usage })
	hdr := map[string]string{"X-API-Key": secret, "Content-Type": "application/json"}
	const messages = `"messages":[{"role":"user","content":"one two three"}]`
	for i, tt := range []struct {
		body      string
		usageSeen bool
	}{
		{`{"model":"m","stream":true,` + messages + `}`, false},
		{`{"model":"m","stream":true,"stream_options":{"include_usage":true},` + messages + `}`, true},
		{`{"model":"m",` + messages + `}`, true},
	} {
		resp, got := do(t, client(t), "POST", p.url+"/v1/chat/completions", tt.body, hdr)
		if resp.StatusCode != 200 || strings.Contains(got, `"usage"`) != tt.usageSeen {
			t.Fatalf("%s: status %d, client got %s", tt.body, resp.StatusCode, got)
		}
		if strings.Contains(tt.body, `"stream":true`) && !strings.HasSuffix(got, "data: [DONE]\n\n") {
			t.Fatalf("%s: stream ends %q", tt.body, got[max(0, len(got)-40):])
		}
		u := usage.wait(t, i+1)[i]
		// The mock counts words of the raw messages: 3.
		wantUsage(t, u, 3, 8, 0, false)
		if u.Model != "m" {
			t.Fatalf("model %q", u.Model)
		}
	}
}
