package origin

import (
	"testing"

	"github.com/keymesh/keymesh/event"
)

func TestClaimsOverlapAsEdgesRoute(t *testing.T) {
	c := func(host, prefix string) claim {
		d := &event.Deployment{PathPrefix: prefix}
		if host != "" {
			d.Hosts = []string{host}
		}
		return claimsOf(d)[0]
	}
	for _, tc := range []struct {
		a, b claim
		want bool
	}{
		{c("api.example.com", "/"), c("api.example.com", "/v1"), true},
		{c("api.example.com", "/v1"), c("api.example.com", "/v10"), false},
		{c("api.example.com", "/v1/"), c("api.example.com", "/v1"), true},
		{c("api.example.com", "/a"), c("api.example.com", "/b"), false},
		{c("api.example.com", "/"), c("www.example.com", "/"), false},
		{c("api.example.com", "/"), c("*.example.com", "/"), true},
		{c("example.com", "/"), c("*.example.com", "/"), false}, // a wildcard needs a name under it
		{c("badexample.com", "/"), c("*.example.com", "/"), false},
		{c("*.example.com", "/"), c("*.eu.example.com", "/x"), true},
		{c("*.example.com", "/"), c("*.example.org", "/"), false},
		{c("api.example.com:8443", "/"), c("api.example.com", "/"), true}, // edges route on the name
		{c("", "/v1"), c("anything.example", "/"), true},
		{c("", "/v1"), c("", "/v2"), false},
		{c("", "/"), c("*.x", "/"), true},
	} {
		if got := claimsOverlap(tc.a, tc.b); got != tc.want {
			t.Errorf("%+v vs %+v: overlap %v, want %v", tc.a, tc.b, got, tc.want)
		}
		if got := claimsOverlap(tc.b, tc.a); got != tc.want {
			t.Errorf("%+v vs %+v (swapped): overlap %v, want %v", tc.b, tc.a, got, tc.want)
		}
	}
}
