package proxy

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

// modelKey is a key on dep_1 limited to models.
func modelKey(t *testing.T, id string, models ...string) (string, apikey.Hash, *cache.Key) {
	t.Helper()
	secret, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	h, _ := apikey.ParseString(secret)
	k := cache.NewKey(&event.Key{ID: id, Project: "prj_1", Secrets: []event.Secret{{Hash: h}},
		Permissions: event.DefaultPermissions, Deployments: []string{"dep_1"}, Models: models}, 1)
	return secret, h, k
}

// wantPermissionError is wantError for a 403 PERMISSION_DENIED, whose
// OpenAI type clients switch on must be permission_error.
func wantPermissionError(t *testing.T, resp *http.Response, body string) {
	t.Helper()
	wantError(t, resp, body, 403, apierror.PermissionDenied)
	if !strings.Contains(body, `"type":"permission_error"`) {
		t.Fatalf("body %s lacks type permission_error", body)
	}
}

func multipartBody(t *testing.T, fields ...string) (string, string) {
	t.Helper()
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	for i := 0; i < len(fields); i += 2 {
		if err := w.WriteField(fields[i], fields[i+1]); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	return b.String(), w.FormDataContentType()
}

func gzipped(s string) string {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	_, _ = io.WriteString(zw, s)
	zw.Close()
	return b.String()
}

// A key's model allow-list lets through exactly the models it names, read
// from what is forwarded: every "model" in any letter case, forms, the
// query, a compressed body, the path of /v1/models/{id}; a model that is
// not a string is refused as ambiguous, a request naming none (but a GET)
// as needing one.
func TestHandlerModelAllowList(t *testing.T) {
	up := newUpstream(t, nil)
	secret, h, key := modelKey(t, "key_1", "meta-llama/*", "mock-model")
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{deployment("dep_1", up.URL, true)}, 1),
		keys: map[apikey.Hash]*cache.Key{h: key}}
	p := startProxy(t, st)
	c := client(t)
	js := map[string]string{"X-API-Key": secret, "Content-Type": "application/json"}
	form, formType := multipartBody(t, "file", "x", "model", "whisper-1")
	okForm, okFormType := multipartBody(t, "model", "mock-model")
	for _, tc := range []struct {
		name, method, path, body string
		header                   map[string]string
		status                   int
		code                     string
	}{
		{"allowed", "POST", "/v1/chat/completions", `{"model":"mock-model","messages":[]}`, js, 200, ""},
		{"allowed by glob", "POST", "/v1/chat/completions", `{"model":"meta-llama/Llama-3-8B"}`, js, 200, ""},
		{"refused", "POST", "/v1/chat/completions", `{"model":"gpt-4o"}`, js, 403, apierror.PermissionDenied},
		{"glob does not cross /", "POST", "/v1/completions", `{"model":"meta-llama/a/b"}`, js, 403, apierror.PermissionDenied},
		{"case differs", "POST", "/v1/completions", `{"model":"Mock-Model"}`, js, 403, apierror.PermissionDenied},
		{"repeated key, one refused", "POST", "/v1/completions", `{"model":"mock-model","model":"gpt-4o"}`, js, 403, apierror.PermissionDenied},
		{"re-cased key refused", "POST", "/v1/completions", `{"model":"mock-model","MODEL":"gpt-4o"}`, js, 403, apierror.PermissionDenied},
		{"re-cased key allowed", "POST", "/v1/completions", `{"Model":"mock-model"}`, js, 200, ""},
		{"escaped key refused", "POST", "/v1/completions", `{"model":"mock-model","mod\u0065l":"gpt-4o"}`, js, 403, apierror.PermissionDenied},
		{"escaped value allowed", "POST", "/v1/completions", `{"model":"mock\u002dmodel"}`, js, 200, ""},
		{"BOM", "POST", "/v1/completions", "\ufeff" + `{"model":"gpt-4o"}`, js, 403, apierror.PermissionDenied},
		{"number", "POST", "/v1/completions", `{"model":1}`, js, 400, apierror.ValidationError},
		{"null", "POST", "/v1/completions", `{"model":null}`, js, 400, apierror.ValidationError},
		{"object", "POST", "/v1/completions", `{"model":{"id":"mock-model"}}`, js, 400, apierror.ValidationError},
		{"no model", "POST", "/v1/completions", `{"prompt":"hi"}`, js, 403, apierror.PermissionDenied},
		{"no body", "POST", "/generate", ``, js, 403, apierror.PermissionDenied},
		{"query names another", "POST", "/v1/completions?model=gpt-4o", `{"model":"mock-model"}`, js, 403, apierror.PermissionDenied},
		{"model path refused", "GET", "/v1/models/gpt-4o", ``, js, 403, apierror.PermissionDenied},
		{"model path allowed", "GET", "/v1/models/meta-llama/x", ``, js, 200, ""},
		{"multipart refused", "POST", "/v1/audio/transcriptions", form, map[string]string{"X-API-Key": secret, "Content-Type": formType}, 403, apierror.PermissionDenied},
		{"multipart allowed", "POST", "/v1/audio/transcriptions", okForm, map[string]string{"X-API-Key": secret, "Content-Type": okFormType}, 200, ""},
		{"urlencoded refused", "POST", "/v1/x", "model=mock-model;model=gpt-4o", map[string]string{"X-API-Key": secret, "Content-Type": "application/x-www-form-urlencoded"}, 403, apierror.PermissionDenied},
		{"gzip refused", "POST", "/v1/completions", gzipped(`{"model":"gpt-4o"}`), map[string]string{"X-API-Key": secret, "Content-Encoding": "gzip"}, 403, apierror.PermissionDenied},
		{"text body unreadable", "POST", "/v1/completions", `model: gpt-4o`, map[string]string{"X-API-Key": secret, "Content-Type": "text/plain"}, 415, apierror.ValidationError},
		{"get without model", "GET", "/v1/whatever", ``, js, 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(up.requests())
			resp, body := do(t, c, tc.method, p.url+tc.path, tc.body, tc.header)
			if tc.status == 200 {
				if resp.StatusCode != 200 {
					t.Fatalf("status %d body %s", resp.StatusCode, body)
				}
				return
			}
			if tc.status == 403 {
				wantPermissionError(t, resp, body)
			} else {
				wantError(t, resp, body, tc.status, tc.code)
			}
			if n := len(up.requests()); n != before {
				t.Fatal("a refused request reached the upstream")
			}
		})
	}
}

// A deployment's list bounds every key on it: a model must be allowed by
// both lists; a key without one is held to the deployment's.
func TestHandlerDeploymentModelListBoundsKeys(t *testing.T) {
	up := newUpstream(t, nil)
	dep := deployment("dep_1", up.URL, true)
	dep.Models = []string{"mock-model", "other/*"}
	limited, h1, k1 := modelKey(t, "key_1", "meta-llama/*", "mock-model")
	open, h2, k2 := modelKey(t, "key_2")
	noAuth := deployment("dep_2", up.URL, false)
	noAuth.PathPrefix, noAuth.Models = "/open", []string{"mock-model"}
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{dep, noAuth}, 1), keys: map[apikey.Hash]*cache.Key{h1: k1, h2: k2}}
	p := startProxy(t, st)
	c := client(t)
	for _, tc := range []struct {
		secret, model string
		ok            bool
	}{
		{limited, "mock-model", true},
		{limited, "meta-llama/x", false}, // the key allows it, the deployment does not
		{limited, "other/x", false},      // the deployment allows it, the key does not
		{open, "other/x", true},
		{open, "gpt-4o", false},
	} {
		resp, body := do(t, c, "POST", p.url+"/v1/chat/completions", `{"model":"`+tc.model+`"}`, map[string]string{"X-API-Key": tc.secret})
		if tc.ok && resp.StatusCode != 200 {
			t.Fatalf("%s: status %d body %s", tc.model, resp.StatusCode, body)
		}
		if !tc.ok {
			wantPermissionError(t, resp, body)
		}
	}
	// Without auth, the deployment's list still applies to everyone.
	resp, body := do(t, c, "POST", p.url+"/open/v1/chat/completions", `{"model":"gpt-4o"}`, nil)
	wantPermissionError(t, resp, body)
	if resp, body := do(t, c, "POST", p.url+"/open/v1/chat/completions", `{"model":"mock-model"}`, nil); resp.StatusCode != 200 {
		t.Fatalf("auth off, allowed model: status %d body %s", resp.StatusCode, body)
	}
}

// Without any list, the model is not looked at: what was forwarded before
// is forwarded still.
func TestHandlerNoModelListChecksNothing(t *testing.T) {
	up := newUpstream(t, nil)
	secret, h, key := testKey(t, "key_1", "dep_1")
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{deployment("dep_1", up.URL, true)}, 1),
		keys: map[apikey.Hash]*cache.Key{h: key}}
	p := startProxy(t, st)
	for _, body := range []string{`{"model":1}`, `{}`, ``} {
		if resp, b := do(t, client(t), "POST", p.url+"/v1/completions", body, map[string]string{"X-API-Key": secret}); resp.StatusCode != 200 {
			t.Fatalf("%s: status %d body %s", body, resp.StatusCode, b)
		}
	}
}

const upstreamModelList = `{"object":"list","data":[{"id":"mock-model","object":"model","owned_by":"keymesh","meta":{"n":1}},` +
	`{"id":"gpt-4o","object":"model"},{"id":"meta-llama/Llama-3-8B","object":"model"},{"id":"meta-llama/a/b"}],"extra":[1,"x"]}`

// GET /v1/models answers only the models the key may use, the rest of the
// answer as it came — whether the upstream sent it whole, chunked or
// gzip-compressed; an answer not of the list's shape is refused (502),
// never passed on unfiltered.
func TestHandlerFiltersModelList(t *testing.T) {
	var modeV atomic.Value
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch mode := modeV.Load().(string); mode {
		case "chunked":
			_, _ = io.WriteString(w, upstreamModelList[:20])
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, upstreamModelList[20:])
		case "gzip":
			w.Header().Set("Content-Encoding", "gzip")
			_, _ = io.WriteString(w, gzipped(upstreamModelList))
		case "error":
			w.WriteHeader(500)
			_, _ = io.WriteString(w, `{"error":"down"}`)
		case "whole":
			_, _ = io.WriteString(w, upstreamModelList)
		default:
			_, _ = io.WriteString(w, mode)
		}
	})
	secret, h, key := modelKey(t, "key_1", "meta-llama/*", "mock-model")
	open, h2, k2 := testKey(t, "key_2", "dep_1")
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{deployment("dep_1", up.URL, true)}, 1),
		keys: map[apikey.Hash]*cache.Key{h: key, h2: k2}}
	p := startProxy(t, st)
	c := client(t)
	hdr := map[string]string{"X-API-Key": secret}
	want := `{"object":"list","data":[{"id":"mock-model","object":"model","owned_by":"keymesh","meta":{"n":1}},` +
		`{"id":"meta-llama/Llama-3-8B","object":"model"}],"extra":[1,"x"]}`
	for _, m := range []string{"whole", "chunked", "gzip"} {
		modeV.Store(m)
		resp, body := do(t, c, "GET", p.url+"/v1/models", "", hdr)
		if resp.StatusCode != 200 || body != want {
			t.Fatalf("%s: status %d body %s", m, resp.StatusCode, body)
		}
		if resp.Header.Get("Content-Encoding") != "" {
			t.Fatalf("%s: Content-Encoding %q on a decoded body", m, resp.Header.Get("Content-Encoding"))
		}
		if !json.Valid([]byte(body)) {
			t.Fatalf("%s: not JSON", m)
		}
	}
	// Asking for a model in the query changes nothing: the list is filtered.
	modeV.Store("whole")
	if resp, body := do(t, c, "GET", p.url+"/v1/models?model=mock-model", "", hdr); resp.StatusCode != 200 || body != want {
		t.Fatalf("with ?model: status %d body %s", resp.StatusCode, body)
	}
	modeV.Store("error")
	if resp, body := do(t, c, "GET", p.url+"/v1/models", "", hdr); resp.StatusCode != 500 || body != `{"error":"down"}` {
		t.Fatalf("an upstream error: status %d body %s", resp.StatusCode, body)
	}
	for _, bad := range []string{`[]`, `{"object":"list"}`, `{"data":{}}`, `{"object":"model","data":[]}`,
		`{"data":[],"Data":[{"id":"gpt-4o"}]}`, `{"data":["gpt-4o"]}`, `{"data":[{"id":1}]}`, `{"data":[{"name":"x"}]}`,
		`{"data":[{"id":"mock-model","ID":"gpt-4o"}]}`, `not json`} {
		modeV.Store(bad)
		resp, body := do(t, c, "GET", p.url+"/v1/models", "", hdr)
		wantError(t, resp, body, 502, apierror.UpstreamError)
	}
	// A key without a list gets the answer untouched.
	modeV.Store("whole")
	if resp, body := do(t, c, "GET", p.url+"/v1/models", "", map[string]string{"X-API-Key": open}); resp.StatusCode != 200 || body != upstreamModelList {
		t.Fatalf("no list: status %d body %s", resp.StatusCode, body)
	}
}
