package e2e

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

// Streamed answers pass through chunk by chunk as the upstream produces
// them, not buffered until the end.
func TestStreamingPassesThroughAsProduced(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})

	const interval = 50 * time.Millisecond
	body := `{"model": "mock-model", "stream": true, "messages": [{"role": "user", "content": "Hello!"}]}`
	req, _ := http.NewRequest(http.MethodPost, "http://"+e.Addr()+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+k.Secret)
	req.Header.Set("X-Mock-Chunk-Interval", interval.String())
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var arrivals []time.Time
	done := false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		if line == "data: [DONE]" {
			done = true
			break
		}
		arrivals = append(arrivals, time.Now())
	}
	if !done || len(arrivals) < 3 {
		t.Fatalf("stream ended early: %d chunks, done=%v, err=%v", len(arrivals), done, sc.Err())
	}
	// Each chunk arrives about one interval after the one before. Buffering
	// anywhere would bunch them together at the end.
	for i := 1; i < len(arrivals); i++ {
		if gap := arrivals[i].Sub(arrivals[i-1]); gap < interval/2 {
			t.Fatalf("chunk %d arrived %v after chunk %d: the stream was buffered", i, gap, i-1)
		}
	}
	// The request's audit record spans the whole stream, not only the
	// time to its first byte.
	span := arrivals[len(arrivals)-1].Sub(arrivals[0])
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		recs, _ := s.auditRecords("key_id=" + k.ID + "&source=edge")
		if len(recs) != 1 {
			return errorf("%d edge records", len(recs))
		}
		if ms, _ := recs[0]["duration_ms"].(float64); time.Duration(ms*float64(time.Millisecond)) < span {
			t.Fatalf("audit duration %v ms, the stream lasted at least %v", ms, span)
		}
		return nil
	})
}

// A stream needs the use_streaming permission.
func TestStreamingNeedsPermission(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	var k struct {
		ID  string `json:"id"`
		Key string `json:"key"`
	}
	s.call(http.MethodPost, "/v1/projects/"+project+"/keys",
		map[string]any{"name": "no-stream", "deployments": []string{d.ID}, "permissions": []string{"run_inference"}}, &k)
	s.secrets = append(s.secrets, k.Key)
	e := s.startEdge(edgeOpts{})
	h := map[string]string{"X-API-Key": k.Key}
	if st, body := chat(t, e, h); st != http.StatusOK {
		t.Fatalf("non-streaming: %d %s", st, body)
	}
	st, body := send(t, e, http.MethodPost, "/v1/chat/completions", h,
		`{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}`)
	if st != http.StatusForbidden || errorCode(t, body) != "PERMISSION_DENIED" {
		t.Fatalf("streaming without use_streaming: %d %s", st, body)
	}
	if st, body := send(t, e, http.MethodGet, "/v1/models", h, ""); st != http.StatusForbidden {
		t.Fatalf("models without read_models: %d %s", st, body)
	}
	// Inference servers parse these bodies as JSON whatever the header
	// says: neither the stream flag nor the prompt limit may hide behind it.
	for _, ct := range []string{"Application/JSON", "text/plain", "application/x-www-form-urlencoded"} {
		hc := map[string]string{"X-API-Key": k.Key, "Content-Type": ct}
		st, body := send(t, e, http.MethodPost, "/v1/chat/completions", hc,
			`{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}`)
		if st != http.StatusForbidden || errorCode(t, body) != "PERMISSION_DENIED" {
			t.Errorf("streaming as %s: %d %s", ct, st, body)
		}
	}
	// TGI's native streaming route streams without asking in the body.
	st, body = send(t, e, http.MethodPost, "/generate_stream", h, `{"inputs": "hi"}`)
	if st != http.StatusForbidden || errorCode(t, body) != "PERMISSION_DENIED" {
		t.Fatalf("/generate_stream without use_streaming: %d %s", st, body)
	}
	// A models-only key runs no inference, on /v1 or off it.
	var mk struct {
		Key string `json:"key"`
	}
	s.call(http.MethodPost, "/v1/projects/"+project+"/keys",
		map[string]any{"name": "models-only", "deployments": []string{d.ID}, "permissions": []string{"read_models"}}, &mk)
	s.secrets = append(s.secrets, mk.Key)
	hm := map[string]string{"X-API-Key": mk.Key}
	if st, body := send(t, e, http.MethodGet, "/v1/models", hm, ""); st != http.StatusOK {
		t.Fatalf("models with read_models: %d %s", st, body)
	}
	for _, path := range []string{"/v1/chat/completions", "/generate", "/invocations"} {
		st, body := send(t, e, http.MethodPost, path, hm, `{"model": "m", "prompt": "hi"}`)
		if st != http.StatusForbidden || errorCode(t, body) != "PERMISSION_DENIED" {
			t.Errorf("%s with a models-only key: %d %s", path, st, body)
		}
	}
}
