package e2e

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestRateLimitHeadersAnd429(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	var k struct {
		ID  string `json:"id"`
		Key string `json:"key"`
	}
	s.call(http.MethodPost, "/v1/projects/"+project+"/keys", map[string]any{
		"deployments": []string{d.ID}, "rate_limit": map[string]int{"requests_per_minute": 3}}, &k)
	s.secrets = append(s.secrets, k.Key)
	e := s.startEdge(edgeOpts{})

	do := func() *http.Response {
		req, _ := http.NewRequest(http.MethodPost, "http://"+e.Addr()+"/v1/chat/completions", strings.NewReader(chatBody))
		req.Header.Set("X-API-Key", k.Key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for i := 0; i < 3; i++ {
		resp := do()
		if resp.StatusCode != 200 || resp.Header.Get("X-RateLimit-Limit") != "3" ||
			resp.Header.Get("X-RateLimit-Remaining") != strconv.Itoa(2-i) {
			t.Fatalf("request %d: %d %v", i+1, resp.StatusCode, resp.Header)
		}
		reset, err := strconv.ParseInt(resp.Header.Get("X-RateLimit-Reset"), 10, 64)
		if err != nil || reset < time.Now().Unix() {
			t.Fatalf("X-RateLimit-Reset %q", resp.Header.Get("X-RateLimit-Reset"))
		}
	}
	resp := do()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("4th request: %d %v", resp.StatusCode, resp.Header)
	}
}
