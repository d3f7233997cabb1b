package apiclient_test

import (
	"encoding/json"
	"testing"

	"github.com/keymesh/keymesh/origin/apiclient"
)

// The partial updates send exactly what is set: an unset field is left
// out (the origin keeps it), a "no ..." switch sends null (the origin
// resets it). Sending null for an unset field would reset it.
func TestPartialUpdatesSendOnlyWhatIsSet(t *testing.T) {
	for _, c := range []struct {
		name string
		in   any
		want string
	}{
		{"empty key update", apiclient.KeyUpdate{}, `{}`},
		{"key update", apiclient.KeyUpdate{Name: ptr("n"), NeverExpires: true, NoRateLimit: true, Deployments: &[]string{}},
			`{"deployments":[],"expires_at":null,"name":"n","rate_limit":null}`},
		{"key update, a value wins over its null switch", apiclient.KeyUpdate{ExpiresAt: ptr("2030-01-01"), NeverExpires: true},
			`{"expires_at":"2030-01-01"}`},
		{"empty deployment input", apiclient.DeploymentInput{}, `{}`},
		{"deployment input", apiclient.DeploymentInput{Hosts: &[]string{"a.test"}, NoRateLimit: true, InvalidKeyStatus: ptr(403),
			UpstreamAuth: &apiclient.UpstreamAuth{Mode: "none"}},
			`{"hosts":["a.test"],"invalid_key_status":403,"rate_limit":null,"upstream_auth":{"mode":"none"}}`},
		{"empty project update", apiclient.ProjectUpdate{}, `{}`},
		{"project update", apiclient.ProjectUpdate{DefaultUpstreams: true, MaxKeys: ptr(0), MaxDeployments: ptr(3)},
			`{"allowed_upstreams":null,"max_deployments":3,"max_keys":null}`},
	} {
		b, err := json.Marshal(c.in)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		// Compare as values: member order is not part of the contract.
		var got, want any
		_ = json.Unmarshal(b, &got)
		_ = json.Unmarshal([]byte(c.want), &want)
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(want)
		if string(gb) != string(wb) {
			t.Errorf("%s: sends %s; want %s", c.name, b, c.want)
		}
	}
}
