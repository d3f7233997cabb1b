package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

func startUpstream(t *testing.T, cfg UpstreamConfig) *Upstream {
	t.Helper()
	u, err := StartUpstream(cfg, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := u.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return u
}

// do sends a request and returns the status, headers and decoded JSON body.
func do(t *testing.T, u *Upstream, method, path, body string, hdr map[string]string) (int, http.Header, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, u.URL()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if method != http.MethodHead {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("%s %s: content type %q, body %s", method, path, ct, raw)
		}
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: body %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode, resp.Header, out
}

// get walks a decoded JSON value: keys for objects, ints for arrays.
func get(t *testing.T, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch p := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("at %q: %T is not an object", p, v)
			}
			if v, ok = m[p]; !ok {
				t.Fatalf("no field %q in %v", p, m)
			}
		case int:
			a, ok := v.([]any)
			if !ok || p >= len(a) {
				t.Fatalf("at [%d]: %v is not an array that long", p, v)
			}
			v = a[p]
		}
	}
	return v
}

func TestNewUpstreamValidates(t *testing.T) {
	for _, cfg := range []UpstreamConfig{{ChunkInterval: -time.Second}, {StreamChunks: -1}} {
		if _, err := NewUpstream(cfg); !errors.Is(err, ErrInvalidUpstreamConfig) {
			t.Errorf("%+v: err %v, want ErrInvalidUpstreamConfig", cfg, err)
		}
	}
	u, err := NewUpstream(UpstreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if u.cfg.ChunkInterval != DefaultChunkInterval || u.cfg.StreamChunks != DefaultStreamChunks || u.cfg.Model != DefaultModel {
		t.Fatalf("defaults not applied: %+v", u.cfg)
	}
	if u.URL() != "" {
		t.Fatalf("URL before Serve: %q", u.URL())
	}
}

func TestHealthAndRouting(t *testing.T) {
	u := startUpstream(t, UpstreamConfig{})
	if !strings.HasPrefix(u.URL(), "http://127.0.0.1:") {
		t.Fatalf("URL %q", u.URL())
	}
	if st, _, body := do(t, u, http.MethodGet, "/health", "", nil); st != http.StatusOK || body["status"] != "ok" {
		t.Fatalf("health: %d %v", st, body)
	}
	if st, _, _ := do(t, u, http.MethodHead, "/health", "", nil); st != http.StatusOK {
		t.Fatalf("HEAD health: %d", st)
	}
	st, _, body := do(t, u, http.MethodGet, "/v1/nope", "", nil)
	if st != http.StatusNotFound || get(t, body, "error", "message") == "" {
		t.Fatalf("unknown path: %d %v", st, body)
	}
	st, hdr, body := do(t, u, http.MethodGet, "/v1/chat/completions", "", nil)
	if st != http.StatusMethodNotAllowed || hdr.Get("Allow") != http.MethodPost {
		t.Fatalf("GET chat: %d allow %q %v", st, hdr.Get("Allow"), body)
	}
}

func TestModels(t *testing.T) {
	u := startUpstream(t, UpstreamConfig{Model: "llama-test"})
	st, _, body := do(t, u, http.MethodGet, "/v1/models", "", nil)
	if st != http.StatusOK || body["object"] != "list" {
		t.Fatalf("%d %v", st, body)
	}
	if id := get(t, body, "data", 0, "id"); id != "llama-test" {
		t.Fatalf("model id %v", id)
	}
	if obj := get(t, body, "data", 0, "object"); obj != "model" {
		t.Fatalf("object %v", obj)
	}
}

func TestChatCompletion(t *testing.T) {
	u := startUpstream(t, UpstreamConfig{})
	st, hdr, body := do(t, u, http.MethodPost, "/v1/chat/completions",
		`{"messages": [{"role": "user", "content": "Hello there"}]}`, map[string]string{"X-Request-Id": "req-42"})
	if st != http.StatusOK {
		t.Fatalf("%d %v", st, body)
	}
	if hdr.Get("X-Request-Id") != "req-42" {
		t.Fatalf("request id not echoed: %q", hdr.Get("X-Request-Id"))
	}
	if body["object"] != "chat.completion" || body["model"] != DefaultModel {
		t.Fatalf("object/model: %v", body)
	}
	if id, _ := body["id"].(string); id == "" {
		t.Fatalf("no id: %v", body)
	}
	if c, _ := body["created"].(float64); c <= 0 {
		t.Fatalf("created %v", body["created"])
	}
	if get(t, body, "choices", 0, "index") != 0.0 ||
		get(t, body, "choices", 0, "message", "role") != "assistant" ||
		get(t, body, "choices", 0, "message", "content") != mockAnswer ||
		get(t, body, "choices", 0, "finish_reason") != "stop" {
		t.Fatalf("choice: %v", body["choices"])
	}
	u1, u2, u3 := get(t, body, "usage", "prompt_tokens").(float64), get(t, body, "usage", "completion_tokens").(float64),
		get(t, body, "usage", "total_tokens").(float64)
	if u1 <= 0 || u2 <= 0 || u3 != u1+u2 {
		t.Fatalf("usage %v", body["usage"])
	}

	// The requested model is named in the answer; no request id, no echo.
	_, hdr, body = do(t, u, http.MethodPost, "/v1/chat/completions", `{"model": "m2", "messages": []}`, nil)
	if body["model"] != "m2" || hdr.Get("X-Request-Id") != "" {
		t.Fatalf("model %v, request id %q", body["model"], hdr.Get("X-Request-Id"))
	}
}

func TestCompletion(t *testing.T) {
	u := startUpstream(t, UpstreamConfig{})
	st, _, body := do(t, u, http.MethodPost, "/v1/completions", `{"model": "mock-model", "prompt": "Say hi"}`, nil)
	if st != http.StatusOK || body["object"] != "text_completion" {
		t.Fatalf("%d %v", st, body)
	}
	if get(t, body, "choices", 0, "text") != mockAnswer || get(t, body, "choices", 0, "finish_reason") != "stop" {
		t.Fatalf("choices %v", body["choices"])
	}
	get(t, body, "usage", "total_tokens")
}

func TestEmbeddings(t *testing.T) {
	u := startUpstream(t, UpstreamConfig{})
	tests := []struct {
		input string
		n     int // embeddings expected; 0 means 400
	}{
		{`"hello"`, 1},
		{`["a", "b", "c"]`, 3},
		{`[1, 2, 3]`, 1},
		{`[[1, 2], [3]]`, 2},
		{`[]`, 0},
		{`42`, 0},
		{`{"x": 1}`, 0},
	}
	for _, tt := range tests {
		t.Run(tt.input, func(t *testing.T) {
			st, _, body := do(t, u, http.MethodPost, "/v1/embeddings", `{"model": "e", "input": `+tt.input+`}`, nil)
			if tt.n == 0 {
				if st != http.StatusBadRequest || get(t, body, "error", "type") != "invalid_request_error" {
					t.Fatalf("%d %v", st, body)
				}
				return
			}
			if st != http.StatusOK || body["object"] != "list" || body["model"] != "e" {
				t.Fatalf("%d %v", st, body)
			}
			data := get(t, body, "data").([]any)
			if len(data) != tt.n {
				t.Fatalf("%d embeddings, want %d", len(data), tt.n)
			}
			for i := range data {
				if get(t, data, i, "object") != "embedding" || get(t, data, i, "index") != float64(i) {
					t.Fatalf("item %d: %v", i, data[i])
				}
				vec := get(t, data, i, "embedding").([]any)
				if len(vec) != embeddingDims {
					t.Fatalf("vector length %d", len(vec))
				}
				if _, ok := vec[0].(float64); !ok {
					t.Fatalf("vector of %T", vec[0])
				}
			}
		})
	}
	// Same text, same vector.
	_, _, a := do(t, u, http.MethodPost, "/v1/embeddings", `{"input": "same"}`, nil)
	_, _, b := do(t, u, http.MethodPost, "/v1/embeddings", `{"input": ["same"]}`, nil)
	ja, _ := json.Marshal(get(t, a, "data", 0, "embedding"))
	jb, _ := json.Marshal(get(t, b, "data", 0, "embedding"))
	if string(ja) != string(jb) {
		t.Fatal("embedding is not deterministic")
	}
}

func TestBadJSON(t *testing.T) {
	u := startUpstream(t, UpstreamConfig{})
	for _, path := range []string{"/v1/chat/completions", "/v1/completions", "/v1/embeddings"} {
		for _, body := range []string{`{"model": `, `not json`, `[1, 2]`, ``, `{"stream": "yes", "input": "x"}`} {
			if path == "/v1/embeddings" && strings.Contains(body, "stream") {
				continue // embeddings ignore "stream"
			}
			t.Run(path+" "+body, func(t *testing.T) {
				st, _, resp := do(t, u, http.MethodPost, path, body, nil)
				if st != http.StatusBadRequest {
					t.Fatalf("status %d, body %v", st, resp)
				}
				if get(t, resp, "error", "type") != "invalid_request_error" || get(t, resp, "error", "message") == "" {
					t.Fatalf("error body %v", resp)
				}
				get(t, resp, "error", "param")
				get(t, resp, "error", "code")
			})
		}
	}
}

func TestOnRequestSeesHeadersAndBody(t *testing.T) {
	type seen struct {
		hdr    http.Header
		body   string
		reread string
		method string
		path   string
	}
	var (
		mu  sync.Mutex
		got []seen
	)
	u := startUpstream(t, UpstreamConfig{OnRequest: func(r *http.Request, body []byte) {
		re, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		got = append(got, seen{hdr: r.Header.Clone(), body: string(body), reread: string(re), method: r.Method, path: r.URL.Path})
	}})
	const reqBody = `{"messages": [{"role": "user", "content": "hi"}]}`
	st, _, _ := do(t, u, http.MethodPost, "/v1/chat/completions", reqBody,
		map[string]string{"Authorization": "Bearer upstream-secret", "X-Custom": "yes"})
	if st != http.StatusOK {
		t.Fatalf("status %d", st)
	}
	do(t, u, http.MethodGet, "/v1/models", "", nil)
	do(t, u, http.MethodPost, "/v1/chat/completions", "{bad", nil) // seen even when rejected

	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 {
		t.Fatalf("OnRequest called %d times, want 3", len(got))
	}
	g := got[0]
	if g.method != http.MethodPost || g.path != "/v1/chat/completions" || g.body != reqBody || g.reread != reqBody {
		t.Fatalf("first request seen as %+v", g)
	}
	if g.hdr.Get("Authorization") != "Bearer upstream-secret" || g.hdr.Get("X-Custom") != "yes" || g.hdr.Get("X-Api-Key") != "" {
		t.Fatalf("headers seen: %v", g.hdr)
	}
	if got[1].path != "/v1/models" || got[1].body != "" {
		t.Fatalf("second request seen as %+v", got[1])
	}
	if got[2].body != "{bad" {
		t.Fatalf("third request seen as %+v", got[2])
	}
}

type sseEvent struct {
	at   time.Time
	data string
}

// readSSE reads data lines until [DONE] or EOF and returns the events (with
// their arrival times) and whether [DONE] arrived last.
func readSSE(t *testing.T, body io.Reader) ([]sseEvent, bool) {
	t.Helper()
	var evs []sseEvent
	sc := bufio.NewScanner(body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("unexpected line %q", line)
		}
		if data == "[DONE]" {
			if sc.Scan() && sc.Text() != "" {
				t.Fatalf("[DONE] not followed by a blank line: %q", sc.Text())
			}
			if sc.Scan() {
				t.Fatalf("data after [DONE]: %q", sc.Text())
			}
			return evs, true
		}
		evs = append(evs, sseEvent{at: time.Now(), data: data})
	}
	return evs, false
}

func streamRequest(t *testing.T, ctx context.Context, u *Upstream, path, body string, interval string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.URL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", "stream-1")
	if interval != "" {
		req.Header.Set(HeaderMockChunkInterval, interval)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestStreamChatArrivesChunkByChunk(t *testing.T) {
	u := startUpstream(t, UpstreamConfig{})
	const interval = 40 * time.Millisecond
	resp := streamRequest(t, context.Background(), u, "/v1/chat/completions",
		`{"model": "mock-model", "stream": true, "messages": [{"role": "user", "content": "Hello!"}]}`, interval.String())
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if resp.Header.Get("X-Request-Id") != "stream-1" {
		t.Fatalf("request id %q", resp.Header.Get("X-Request-Id"))
	}
	evs, done := readSSE(t, resp.Body)
	if !done || len(evs) != DefaultStreamChunks {
		t.Fatalf("%d chunks, done=%v", len(evs), done)
	}
	var text strings.Builder
	var id string
	for i, ev := range evs {
		var c map[string]any
		if err := json.Unmarshal([]byte(ev.data), &c); err != nil {
			t.Fatalf("chunk %d %q: %v", i, ev.data, err)
		}
		if c["object"] != "chat.completion.chunk" || c["model"] != "mock-model" {
			t.Fatalf("chunk %d: %v", i, c)
		}
		if i == 0 {
			id, _ = c["id"].(string)
		} else if c["id"] != id {
			t.Fatalf("chunk %d id %v, want %s", i, c["id"], id)
		}
		delta := get(t, c, "choices", 0, "delta").(map[string]any)
		role, hasRole := delta["role"]
		if (i == 0) != hasRole || (hasRole && role != "assistant") {
			t.Fatalf("chunk %d delta %v: role only (and always) in the first", i, delta)
		}
		text.WriteString(delta["content"].(string))
		finish := get(t, c, "choices", 0, "finish_reason")
		if i == len(evs)-1 && finish != "stop" || i < len(evs)-1 && finish != nil {
			t.Fatalf("chunk %d finish_reason %v", i, finish)
		}
	}
	if text.String() != mockAnswer {
		t.Fatalf("deltas add up to %q, want %q", text.String(), mockAnswer)
	}
	// Paced, not bunched: the chunks were spread over about (n-1) intervals.
	n := len(evs)
	if span := evs[n-1].at.Sub(evs[0].at); span < time.Duration(n-1)*interval/2 {
		t.Fatalf("chunks arrived within %v; want at least %v", span, time.Duration(n-1)*interval/2)
	}
	testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if s := u.Stats(); s.StreamsCompleted != 1 || s.InFlight != 0 {
			return errors.New("stream not counted as completed")
		}
		return nil
	})
}

func TestStreamCompletionUsesConfig(t *testing.T) {
	const interval = 30 * time.Millisecond
	u := startUpstream(t, UpstreamConfig{ChunkInterval: interval, StreamChunks: 3})
	resp := streamRequest(t, context.Background(), u, "/v1/completions", `{"prompt": "hi", "stream": true}`, "")
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	evs, done := readSSE(t, resp.Body)
	if !done || len(evs) != 3 {
		t.Fatalf("%d chunks, done=%v", len(evs), done)
	}
	var text strings.Builder
	for i, ev := range evs {
		var c map[string]any
		if err := json.Unmarshal([]byte(ev.data), &c); err != nil {
			t.Fatal(err)
		}
		if c["object"] != "text_completion" {
			t.Fatalf("chunk %d: %v", i, c)
		}
		text.WriteString(get(t, c, "choices", 0, "text").(string))
	}
	if text.String() != mockAnswer {
		t.Fatalf("text %q", text.String())
	}
	if span := evs[2].at.Sub(evs[0].at); span < 2*interval/2 {
		t.Fatalf("chunks arrived within %v", span)
	}
}

func TestStreamManyChunksAndNoPause(t *testing.T) {
	// More chunks than tokens: some deltas are empty, the text still adds up.
	u := startUpstream(t, UpstreamConfig{StreamChunks: 20})
	resp := streamRequest(t, context.Background(), u, "/v1/chat/completions", `{"stream": true}`, "0s")
	defer resp.Body.Close()
	evs, done := readSSE(t, resp.Body)
	if !done || len(evs) != 20 {
		t.Fatalf("%d chunks, done=%v", len(evs), done)
	}
	var text strings.Builder
	for _, ev := range evs {
		var c map[string]any
		if err := json.Unmarshal([]byte(ev.data), &c); err != nil {
			t.Fatal(err)
		}
		text.WriteString(get(t, c, "choices", 0, "delta", "content").(string))
	}
	if text.String() != mockAnswer {
		t.Fatalf("text %q", text.String())
	}
}

func TestStreamBadIntervalHeader(t *testing.T) {
	u := startUpstream(t, UpstreamConfig{})
	for _, h := range []string{"soon", "-1s", "2h"} {
		st, _, body := do(t, u, http.MethodPost, "/v1/chat/completions", `{"stream": true}`,
			map[string]string{HeaderMockChunkInterval: h})
		if st != http.StatusBadRequest || get(t, body, "error", "type") != "invalid_request_error" {
			t.Fatalf("%s: %d %v", h, st, body)
		}
	}
}

func TestStreamStopsWhenClientGoesAway(t *testing.T) {
	u := startUpstream(t, UpstreamConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// At 10s a chunk, the full stream would take 70s.
	resp := streamRequest(t, ctx, u, "/v1/chat/completions", `{"stream": true}`, "10s")
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "data: {") {
		t.Fatalf("first line %q, %v", line, err)
	}
	if s := u.Stats(); s.InFlight != 1 {
		t.Fatalf("stats while streaming: %+v", s)
	}
	cancel()
	testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if s := u.Stats(); s.InFlight != 0 || s.StreamsAborted != 1 || s.StreamsCompleted != 0 {
			return errors.New("handler still running: " + jsonString(s))
		}
		return nil
	})
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestShutdownDrainsStreams(t *testing.T) {
	u, err := StartUpstream(UpstreamConfig{StreamChunks: 4, ChunkInterval: 30 * time.Millisecond}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	resp := streamRequest(t, context.Background(), u, "/v1/chat/completions", `{"stream": true}`, "")
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "data: ") {
		t.Fatalf("first line %q, %v", line, err)
	}
	shut := make(chan error, 1)
	go func() { shut <- u.Shutdown(context.Background()) }()
	evs, done := readSSE(t, br)
	if !done || len(evs) != 3 { // the first chunk was read above
		t.Fatalf("stream cut by shutdown: %d more chunks, done=%v", len(evs), done)
	}
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if err := u.Shutdown(context.Background()); err != nil {
		t.Fatalf("second shutdown: %v", err)
	}
	if s := u.Stats(); s.StreamsCompleted != 1 || s.InFlight != 0 {
		t.Fatalf("stats %+v", s)
	}
	if _, err := http.Get(u.URL() + "/health"); err == nil {
		t.Fatal("still serving after shutdown")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := u.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve after shutdown: %v", err)
	}
}

func TestShutdownDeadlineCutsStreams(t *testing.T) {
	u, err := StartUpstream(UpstreamConfig{}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	resp := streamRequest(t, context.Background(), u, "/v1/chat/completions", `{"stream": true}`, "10s")
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "data: ") {
		t.Fatalf("first line %q, %v", line, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := u.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("shutdown with an ended context: %v", err)
	}
	if err := u.Shutdown(context.Background()); !errors.Is(err, context.Canceled) {
		t.Fatalf("second shutdown returns the first's result; got %v", err)
	}
	if _, done := readSSE(t, br); done {
		t.Fatal("stream finished despite the shutdown deadline")
	}
	testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if s := u.Stats(); s.InFlight != 0 || s.StreamsAborted != 1 {
			return errors.New("stream handler still running: " + jsonString(s))
		}
		return nil
	})
}

func TestHandlerWithoutListener(t *testing.T) {
	u, err := NewUpstream(UpstreamConfig{Model: "h"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(u.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if get(t, body, "data", 0, "id") != "h" || u.Stats().Requests != 1 {
		t.Fatalf("%v %+v", body, u.Stats())
	}
}

// A stream reports its usage in a last, usage-only chunk only when asked
// (stream_options.include_usage), as vLLM and OpenAI do; the counts are
// the non-streamed answer's.
func TestStreamUsageOnlyWhenAsked(t *testing.T) {
	u := startUpstream(t, UpstreamConfig{StreamChunks: 2})
	for _, path := range []string{"/v1/chat/completions", "/v1/completions"} {
		for _, asked := range []bool{false, true} {
			body := `{"stream": true, "messages": "one two three", "prompt": "one two three"}`
			if asked {
				body = `{"stream": true, "stream_options": {"include_usage": true}, "messages": "one two three", "prompt": "one two three"}`
			}
			resp := streamRequest(t, context.Background(), u, path, body, "0s")
			evs, done := readSSE(t, resp.Body)
			resp.Body.Close()
			want := 2
			if asked {
				want = 3
			}
			if !done || len(evs) != want {
				t.Fatalf("%s asked=%v: %d chunks, done=%v", path, asked, len(evs), done)
			}
			for i, ev := range evs {
				var c map[string]any
				if err := json.Unmarshal([]byte(ev.data), &c); err != nil {
					t.Fatal(err)
				}
				usage, has := c["usage"]
				if last := asked && i == len(evs)-1; last != has {
					t.Fatalf("%s asked=%v chunk %d: usage %v", path, asked, i, usage)
				}
				if !has {
					continue
				}
				if ch, _ := c["choices"].([]any); ch == nil || len(ch) != 0 {
					t.Fatalf("%s: usage chunk has choices %v", path, c["choices"])
				}
				want := map[string]any{"prompt_tokens": float64(3), "completion_tokens": float64(len(mockTokens)),
					"total_tokens": float64(3 + len(mockTokens))}
				if fmt.Sprint(usage) != fmt.Sprint(want) {
					t.Fatalf("%s: usage %v, want %v", path, usage, want)
				}
			}
		}
	}
}
