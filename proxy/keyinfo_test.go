package proxy

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

// GET /v1/key answers the key's own view from the State, on any host and
// without the upstream: by X-API-Key or Bearer, with its in-flight count at
// this edge, never its secret or hash. A refused key gets the answer it
// gets everywhere else.
func TestHandlerKeyInfo(t *testing.T) {
	up := newBlockingUpstream(t)
	dep := deployment("dep_1", up.URL, true)
	dep.Hosts = []string{"api.example"}
	secret, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	h, _ := apikey.ParseString(secret)
	exp := time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC)
	key := cache.NewKey(&event.Key{ID: "key_1", Name: "ci runner", Project: "prj_1", Secrets: []event.Secret{{Hash: h}},
		Permissions: []string{event.PermRunInference}, Deployments: []string{"dep_1"}, ExpiresAt: &exp,
		RateLimit: &event.RateLimit{RequestsPerMinute: 60}, Models: []string{"mock-model"}, MaxConcurrency: 4}, 7)
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{dep}, 1), keys: map[apikey.Hash]*cache.Key{h: key}}
	p := startProxy(t, st)

	get := func(host string, hdr map[string]string) (*http.Response, string) {
		req, _ := http.NewRequest("GET", p.url+"/v1/key", nil)
		req.Host = host
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := client(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		_, _ = io.Copy(&b, resp.Body)
		return resp, b.String()
	}

	// One request in flight, held by the upstream.
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequest("POST", p.url+"/v1/completions", strings.NewReader(`{"model":"mock-model"}`))
		req.Host = "api.example"
		req.Header.Set("X-API-Key", secret)
		if resp, err := client(t).Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	up.waitHeld(t, 1)
	inFlightIs(t, p, 1)

	for _, hdr := range []map[string]string{{"X-API-Key": secret}, {"Authorization": "Bearer " + secret}} {
		resp, body := get("elsewhere.example", hdr) // no deployment serves this host
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("status %d body %s", resp.StatusCode, body)
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatal(err)
		}
		want := map[string]any{"id": "key_1", "name": "ci runner", "project": "prj_1", "revision": 7.0,
			"expires_at": "2031-01-02T03:04:05Z", "permissions": []any{"run_inference"},
			"rate_limit": map[string]any{"requests_per_minute": 60.0}, "models": []any{"mock-model"},
			"max_concurrency": 4.0, "tokens_per_minute": nil, "tokens_per_day": nil, "quota": nil,
			"remaining": map[string]any{}, "deployments": []any{"dep_1"}, "in_flight": 1.0, "edge": "edge-1", "site": "eu",
			"global": map[string]any{"edges": 1.0, "partitioned": false,
				"rate_limit": map[string]any{"limit": 60.0, "used": 1.0, "remaining": 59.0}}}
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(want)
		if string(gb) != string(wb) {
			t.Fatalf("answer\n%s\nwant\n%s", gb, wb)
		}
		if strings.Contains(body, secret) || strings.Contains(body, "hash") || strings.Contains(body, "secret") {
			t.Fatalf("the answer holds the secret or its hash: %s", body)
		}
	}
	close(up.release)
	<-done
	if n := len(up.requests()); n != 1 {
		t.Fatalf("the upstream saw %d requests, want the one completion", n)
	}

	// Refusals: the same answers as on a deployment.
	resp, body := get("elsewhere.example", nil)
	wantError(t, resp, body, 401, apierror.AuthenticationFailed)
	if resp.Header.Get("WWW-Authenticate") != "Bearer" {
		t.Fatal("no WWW-Authenticate")
	}
	other, _ := apikey.Generate()
	resp, body = get("elsewhere.example", map[string]string{"X-API-Key": other})
	wantError(t, resp, body, 401, apierror.AuthenticationFailed)
	dreq, _ := http.NewRequest("POST", p.url+"/v1/completions", strings.NewReader(`{}`))
	dreq.Host = "api.example"
	dreq.Header.Set("X-API-Key", other)
	dresp, err := client(t).Do(dreq)
	if err != nil {
		t.Fatal(err)
	}
	db, _ := io.ReadAll(dresp.Body)
	dresp.Body.Close()
	dbody := string(db)
	if dbody != body || dresp.StatusCode != resp.StatusCode {
		t.Fatalf("invalid key: /v1/key answers %d %s, a deployment %d %s", resp.StatusCode, body, dresp.StatusCode, dbody)
	}
	resp, body = get("api.example", map[string]string{"X-API-Key": "km_not-a-key"})
	wantError(t, resp, body, 401, apierror.AuthenticationFailed)
	st.unavailable.Store(true)
	resp, body = get("api.example", map[string]string{"X-API-Key": secret})
	wantError(t, resp, body, 503, apierror.Unavailable)
}
