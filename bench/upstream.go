package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of UpstreamConfig; a zero field means the default.
const (
	DefaultChunkInterval = 20 * time.Millisecond
	DefaultStreamChunks  = 8
	DefaultModel         = "mock-model"
)

// Limits of the mock upstream.
const (
	// MaxUpstreamBody is the largest request body the mock upstream reads;
	// a larger one is answered 413.
	MaxUpstreamBody = 32 << 20
	// MaxMockChunkInterval is the longest pace X-Mock-Chunk-Interval may
	// ask for; a longer (or negative, or unparsable) one is answered 400.
	MaxMockChunkInterval = time.Minute
	// embeddingDims is the length of every embedding vector.
	embeddingDims = 16
)

// HeaderMockChunkInterval overrides UpstreamConfig.ChunkInterval for one
// streamed request, as a Go duration ("50ms"; "0s" means no pause).
const HeaderMockChunkInterval = "X-Mock-Chunk-Interval"

// ErrInvalidUpstreamConfig is wrapped by NewUpstream's errors.
var ErrInvalidUpstreamConfig = errors.New("invalid upstream config")

// mockTokens make up the content of every chat and completion answer.
// Streamed, they are spread over the chunks, so the deltas always add up to
// mockAnswer.
var mockTokens = []string{"Hello", "!", " This", " is", " a", " mock", " completion", "."}

var mockAnswer = strings.Join(mockTokens, "")

// UpstreamConfig configures a mock OpenAI-compatible upstream. Every zero
// field means its documented default.
type UpstreamConfig struct {
	// ChunkInterval is the pause between two chunks of a streamed answer
	// (the first chunk is sent at once). Zero means DefaultChunkInterval
	// (20ms); negative is an error. A request may override it with the
	// X-Mock-Chunk-Interval header.
	ChunkInterval time.Duration
	// StreamChunks is how many data chunks a streamed answer has before
	// "data: [DONE]". Zero means DefaultStreamChunks (8); negative is an
	// error.
	StreamChunks int
	// Model is the model listed by GET /v1/models and named in answers to
	// requests that name none. Empty means DefaultModel ("mock-model").
	Model string
	// Logger gets one line per request (method, path, status, duration,
	// request id; never headers or bodies). Nil means discard.
	Logger *slog.Logger
	// OnRequest, if set, is called for every request before it is
	// answered, with the request (its Body re-readable) and the body bytes
	// read (empty for a body-less request). It runs on the request's
	// goroutine, so it must be safe for concurrent use; the request must
	// not be kept after it returns (clone headers you need).
	OnRequest func(r *http.Request, body []byte)
}

// UpstreamStats counts what an Upstream has handled since it was created.
type UpstreamStats struct {
	// Requests is every request received.
	Requests int64
	// InFlight is requests whose handler has not yet returned.
	InFlight int64
	// StreamsCompleted is streams that sent every chunk and [DONE].
	StreamsCompleted int64
	// StreamsAborted is streams that stopped early because the client went
	// away (or the server was closed).
	StreamsAborted int64
}

// Upstream is a mock OpenAI-compatible inference server. Its methods are
// safe for concurrent use.
type Upstream struct {
	cfg     UpstreamConfig
	log     *slog.Logger
	srv     *http.Server
	handler http.Handler

	seq       atomic.Int64 // answer ids
	requests  atomic.Int64
	inFlight  atomic.Int64
	completed atomic.Int64
	aborted   atomic.Int64

	mu   sync.Mutex
	addr net.Addr // first listener served

	shutdownOnce sync.Once
	shutdownErr  error
}

// NewUpstream validates cfg, fills its defaults and returns an Upstream that
// serves nothing until Serve (or use StartUpstream).
func NewUpstream(cfg UpstreamConfig) (*Upstream, error) {
	if cfg.ChunkInterval < 0 {
		return nil, fmt.Errorf("chunk interval %v is negative: %w", cfg.ChunkInterval, ErrInvalidUpstreamConfig)
	}
	if cfg.StreamChunks < 0 {
		return nil, fmt.Errorf("stream chunks %d is negative: %w", cfg.StreamChunks, ErrInvalidUpstreamConfig)
	}
	if cfg.ChunkInterval == 0 {
		cfg.ChunkInterval = DefaultChunkInterval
	}
	if cfg.StreamChunks == 0 {
		cfg.StreamChunks = DefaultStreamChunks
	}
	if cfg.Model == "" {
		cfg.Model = DefaultModel
	}
	u := &Upstream{cfg: cfg, log: cfg.Logger}
	if u.log == nil {
		u.log = slog.New(slog.DiscardHandler)
	}
	u.handler = http.HandlerFunc(u.serveHTTP)
	u.srv = &http.Server{
		Handler:           u.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(u.log.Handler(), slog.LevelWarn),
	}
	return u, nil
}

// StartUpstream creates an Upstream, listens on addr ("127.0.0.1:0" picks a
// free port) and serves in a goroutine. Stop it with Shutdown.
func StartUpstream(cfg UpstreamConfig, addr string) (*Upstream, error) {
	u, err := NewUpstream(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	u.setAddr(ln.Addr())
	go func() {
		if err := u.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			u.log.Error("mock upstream stopped serving", "err", err)
		}
	}()
	return u, nil
}

// Serve answers requests on ln until Shutdown, then returns
// http.ErrServerClosed (at once if Shutdown already happened). It closes ln.
func (u *Upstream) Serve(ln net.Listener) error {
	u.setAddr(ln.Addr())
	return u.srv.Serve(ln)
}

func (u *Upstream) setAddr(a net.Addr) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.addr == nil {
		u.addr = a
	}
}

// Addr is the address of the first listener served, or nil before Serve.
func (u *Upstream) Addr() net.Addr {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.addr
}

// URL is "http://host:port" of the first listener served, or "" before
// Serve or StartUpstream.
func (u *Upstream) URL() string {
	a := u.Addr()
	if a == nil {
		return ""
	}
	return "http://" + a.String()
}

// Handler answers like the server does, for use without a listener (for
// example with httptest). Its requests count in Stats.
func (u *Upstream) Handler() http.Handler { return u.handler }

// Stats returns the counters so far.
func (u *Upstream) Stats() UpstreamStats {
	return UpstreamStats{
		Requests:         u.requests.Load(),
		InFlight:         u.inFlight.Load(),
		StreamsCompleted: u.completed.Load(),
		StreamsAborted:   u.aborted.Load(),
	}
}

// Shutdown stops accepting connections and waits for requests in flight,
// streams included, to finish. If ctx ends first it closes the remaining
// connections (their streams stop) and returns ctx.Err(). Calling it again
// waits for the first call and returns its result.
func (u *Upstream) Shutdown(ctx context.Context) error {
	u.shutdownOnce.Do(func() {
		err := u.srv.Shutdown(ctx)
		if err != nil {
			_ = u.srv.Close()
		}
		u.shutdownErr = err
	})
	return u.shutdownErr
}

// statusWriter remembers the status for the request log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's Flush.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (u *Upstream) serveHTTP(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	u.requests.Add(1)
	u.inFlight.Add(1)
	defer u.inFlight.Add(-1)
	w := &statusWriter{ResponseWriter: rw}
	reqID := r.Header.Get("X-Request-Id")
	if reqID != "" {
		w.Header().Set("X-Request-Id", reqID)
	}
	defer func() {
		u.log.Info("mock upstream request", "method", r.Method, "path", r.URL.Path,
			"status", w.status, "duration", time.Since(start), "request_id", reqID)
	}()

	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxUpstreamBody))
	r.Body = io.NopCloser(bytes.NewReader(body))
	if u.cfg.OnRequest != nil {
		u.cfg.OnRequest(r, body)
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeOpenAIError(w, http.StatusRequestEntityTooLarge, "invalid_request_error",
				fmt.Sprintf("request body is over %d bytes", MaxUpstreamBody))
			return
		}
		writeOpenAIError(w, http.StatusBadRequest, "invalid_request_error", "reading request body: "+err.Error())
		return
	}

	route := func(method string, h func(http.ResponseWriter, *http.Request, []byte)) {
		if r.Method != method && !(method == http.MethodGet && r.Method == http.MethodHead) {
			allow := method
			if method == http.MethodGet {
				allow += ", " + http.MethodHead
			}
			w.Header().Set("Allow", allow)
			writeOpenAIError(w, http.StatusMethodNotAllowed, "invalid_request_error",
				fmt.Sprintf("method %s is not allowed on %s", r.Method, r.URL.Path))
			return
		}
		h(w, r, body)
	}
	switch r.URL.Path {
	case "/health", "/ping":
		route(http.MethodGet, func(w http.ResponseWriter, _ *http.Request, _ []byte) {
			writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		})
	case "/v1/models":
		route(http.MethodGet, u.models)
	case "/v1/chat/completions":
		route(http.MethodPost, u.chat)
	case "/v1/completions":
		route(http.MethodPost, u.completions)
	case "/v1/embeddings":
		route(http.MethodPost, u.embeddings)
	default:
		writeOpenAIError(w, http.StatusNotFound, "not_found_error", "no route for "+r.URL.Path)
	}
}

func (u *Upstream) models(w http.ResponseWriter, _ *http.Request, _ []byte) {
	writeJSON(w, http.StatusOK, map[string]any{
		"object": "list",
		"data": []map[string]any{{
			"id": u.cfg.Model, "object": "model", "created": 0, "owned_by": "keymesh-mock",
		}},
	})
}

// genRequest is the part of a chat or completion request the mock reads.
type genRequest struct {
	Model    string          `json:"model"`
	Stream   bool            `json:"stream"`
	Messages json.RawMessage `json:"messages"`
	Prompt   json.RawMessage `json:"prompt"`
	// StreamOptions.IncludeUsage asks a stream for a last, usage-only
	// chunk ("choices": [] and "usage"), as vLLM and OpenAI send it.
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// includeUsage reports whether a streamed request asked for its usage.
func (r *genRequest) includeUsage() bool {
	return r.StreamOptions != nil && r.StreamOptions.IncludeUsage
}

// usageChunk is the last chunk of a stream that asked for usage: no
// choices, the whole answer's usage.
func usageChunk(usage map[string]int, obj, id, model string, created int64) func() any {
	return func() any {
		return map[string]any{"id": id, "object": obj, "created": created, "model": model,
			"choices": []any{}, "usage": usage}
	}
}

// decodeObject decodes a JSON object body into v, answering 400 and
// returning false when it is not one.
func decodeObject(w http.ResponseWriter, body []byte, v any) bool {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		writeOpenAIError(w, http.StatusBadRequest, "invalid_request_error", "request body must be a JSON object")
		return false
	}
	if err := json.Unmarshal(trimmed, v); err != nil {
		writeOpenAIError(w, http.StatusBadRequest, "invalid_request_error", "invalid JSON body: "+err.Error())
		return false
	}
	return true
}

func (u *Upstream) model(req string) string {
	if req != "" {
		return req
	}
	return u.cfg.Model
}

// promptTokens is a rough token count: whitespace-separated words.
func promptTokens(raw json.RawMessage) int {
	return len(strings.Fields(string(raw)))
}

func (u *Upstream) usage(prompt int) map[string]int {
	return map[string]int{
		"prompt_tokens":     prompt,
		"completion_tokens": len(mockTokens),
		"total_tokens":      prompt + len(mockTokens),
	}
}

func (u *Upstream) chat(w http.ResponseWriter, r *http.Request, body []byte) {
	var req genRequest
	if !decodeObject(w, body, &req) {
		return
	}
	id := fmt.Sprintf("chatcmpl-mock-%d", u.seq.Add(1))
	model := u.model(req.Model)
	created := time.Now().Unix()
	if req.Stream {
		var final func() any
		if req.includeUsage() {
			final = usageChunk(u.usage(promptTokens(req.Messages)), "chat.completion.chunk", id, model, created)
		}
		u.stream(w, r, final, func(i, n int, content string) any {
			delta := map[string]any{"content": content}
			if i == 0 {
				delta["role"] = "assistant"
			}
			var finish any
			if i == n-1 {
				finish = "stop"
			}
			return map[string]any{
				"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
				"choices": []map[string]any{{"index": 0, "delta": delta, "logprobs": nil, "finish_reason": finish}},
			}
		})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"id": id, "object": "chat.completion", "created": created, "model": model,
		"choices": []map[string]any{{
			"index":         0,
			"message":       map[string]any{"role": "assistant", "content": mockAnswer},
			"logprobs":      nil,
			"finish_reason": "stop",
		}},
		"usage": u.usage(promptTokens(req.Messages)),
	})
}

func (u *Upstream) completions(w http.ResponseWriter, r *http.Request, body []byte) {
	var req genRequest
	if !decodeObject(w, body, &req) {
		return
	}
	id := fmt.Sprintf("cmpl-mock-%d", u.seq.Add(1))
	model := u.model(req.Model)
	created := time.Now().Unix()
	if req.Stream {
		var final func() any
		if req.includeUsage() {
			final = usageChunk(u.usage(promptTokens(req.Prompt)), "text_completion", id, model, created)
		}
		u.stream(w, r, final, func(i, n int, content string) any {
			var finish any
			if i == n-1 {
				finish = "stop"
			}
			return map[string]any{
				"id": id, "object": "text_completion", "created": created, "model": model,
				"choices": []map[string]any{{"index": 0, "text": content, "logprobs": nil, "finish_reason": finish}},
			}
		})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"id": id, "object": "text_completion", "created": created, "model": model,
		"choices": []map[string]any{{"index": 0, "text": mockAnswer, "logprobs": nil, "finish_reason": "stop"}},
		"usage":   u.usage(promptTokens(req.Prompt)),
	})
}

// stream answers text/event-stream: n chunks built by chunk, each flushed
// one interval after the previous, then (final set: the request asked for
// usage) final's chunk, then [DONE]. It stops when the client's context
// ends or a write fails.
func (u *Upstream) stream(w http.ResponseWriter, r *http.Request, final func() any, chunk func(i, n int, content string) any) {
	interval := u.cfg.ChunkInterval
	if h := r.Header.Get(HeaderMockChunkInterval); h != "" {
		d, err := time.ParseDuration(h)
		if err != nil || d < 0 || d > MaxMockChunkInterval {
			writeOpenAIError(w, http.StatusBadRequest, "invalid_request_error",
				fmt.Sprintf("%s must be a duration between 0s and %v", HeaderMockChunkInterval, MaxMockChunkInterval))
			return
		}
		interval = d
	}
	n := u.cfg.StreamChunks
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	ctx := r.Context()
	// A timer started after each flush (not a ticker): no two chunks leave
	// less than interval apart, even when one write was slow.
	var pause *time.Timer
	if interval > 0 && n > 1 {
		pause = time.NewTimer(interval)
		defer pause.Stop()
	}
	send := func(payload []byte) bool {
		if _, err := fmt.Fprintf(w, "data: %s\n\n", payload); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	for i := range n {
		if i > 0 && pause != nil {
			pause.Reset(interval)
			select {
			case <-ctx.Done():
				u.aborted.Add(1)
				return
			case <-pause.C:
			}
		}
		if ctx.Err() != nil {
			u.aborted.Add(1)
			return
		}
		// Spread the answer's tokens over the n chunks.
		content := strings.Join(mockTokens[i*len(mockTokens)/n:(i+1)*len(mockTokens)/n], "")
		b, err := json.Marshal(chunk(i, n, content))
		if err != nil || !send(b) {
			u.aborted.Add(1)
			return
		}
	}
	if final != nil {
		b, err := json.Marshal(final())
		if err != nil || !send(b) {
			u.aborted.Add(1)
			return
		}
	}
	if !send([]byte("[DONE]")) {
		u.aborted.Add(1)
		return
	}
	u.completed.Add(1)
}

// embeddingRequest is the part of an embeddings request the mock reads.
type embeddingRequest struct {
	Model string          `json:"model"`
	Input json.RawMessage `json:"input"`
}

func (u *Upstream) embeddings(w http.ResponseWriter, _ *http.Request, body []byte) {
	var req embeddingRequest
	if !decodeObject(w, body, &req) {
		return
	}
	inputs, ok := embeddingInputs(req.Input)
	if !ok {
		writeOpenAIError(w, http.StatusBadRequest, "invalid_request_error",
			"input must be a non-empty string, array of strings, array of tokens or array of token arrays")
		return
	}
	data := make([]map[string]any, len(inputs))
	tokens := 0
	for i, in := range inputs {
		data[i] = map[string]any{"object": "embedding", "embedding": mockEmbedding(in), "index": i}
		tokens += len(strings.Fields(in))
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"object": "list", "data": data, "model": u.model(req.Model),
		"usage": map[string]int{"prompt_tokens": tokens, "total_tokens": tokens},
	})
}

// embeddingInputs accepts every input shape OpenAI does: a string, strings,
// a token array, or token arrays (tokens are rendered as text).
func embeddingInputs(raw json.RawMessage) ([]string, bool) {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}, true
	}
	var many []string
	if json.Unmarshal(raw, &many) == nil && len(many) > 0 {
		return many, true
	}
	var tokens []int
	if json.Unmarshal(raw, &tokens) == nil && len(tokens) > 0 {
		return []string{joinInts(tokens)}, true
	}
	var tokenLists [][]int
	if json.Unmarshal(raw, &tokenLists) == nil && len(tokenLists) > 0 {
		out := make([]string, len(tokenLists))
		for i, t := range tokenLists {
			out[i] = joinInts(t)
		}
		return out, true
	}
	return nil, false
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, " ")
}

// mockEmbedding is a deterministic unit vector derived from the text.
func mockEmbedding(text string) []float64 {
	v := make([]float64, embeddingDims)
	var norm float64
	for i := range v {
		h := fnv.New64a()
		fmt.Fprintf(h, "%d:%s", i, text)
		v[i] = float64(h.Sum64()%2001)/1000 - 1 // in [-1, 1]
		norm += v[i] * v[i]
	}
	norm = math.Sqrt(norm)
	if norm == 0 {
		v[0], norm = 1, 1
	}
	for i := range v {
		v[i] /= norm
	}
	return v
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// writeOpenAIError answers the error body OpenAI's API uses:
// {"error": {"message", "type", "param", "code"}}.
func writeOpenAIError(w http.ResponseWriter, status int, typ, msg string) {
	writeJSON(w, status, map[string]any{
		"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": status},
	})
}
