package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// probe sends the key from the environment, checks an exact status, and
// prints status and body for scripts.
func TestProbeExpectAndKey(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-API-Key") != "the-key" {
			w.WriteHeader(http.StatusUnauthorized)
		}
		_, _ = w.Write([]byte(`{"applied_revision":7}`))
	}))
	defer srv.Close()
	vars := map[string]string{"K": "the-key", "WRONG": "nope"}
	for _, tt := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{srv.URL}, 1, ""},
		{[]string{srv.URL, "--expect", "401", "--print-status"}, 0, "401\n"},
		{[]string{srv.URL, "--key-env", "K", "--body"}, 0, `{"applied_revision":7}`},
		{[]string{srv.URL, "--key-env", "WRONG", "--expect", "200"}, 1, ""},
		{[]string{srv.URL, "--key-env", "UNSET"}, 2, ""},
	} {
		e, stdout, _ := testEnv(context.Background(), vars)
		if code := run(e, append([]string{"probe"}, tt.args...)); code != tt.code || !strings.Contains(stdout.String(), tt.out) {
			t.Errorf("%v: exit %d, stdout %q; want %d, %q", tt.args, code, stdout.String(), tt.code, tt.out)
		}
	}
}
