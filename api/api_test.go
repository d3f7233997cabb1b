package api

import (
	"encoding/json"
	"testing"
)

// A patch sends exactly the members that are set: absent ones are left
// out, Null() ones are null. Without omitzero or IsZero an absent member
// would be sent as null and reset the field.
func TestNullableEncodesAbsentNullAndValue(t *testing.T) {
	for _, c := range []struct {
		in   KeyPatch
		want string
	}{
		{KeyPatch{}, `{}`},
		{KeyPatch{ExpiresAt: Null[string]()}, `{"expires_at":null}`},
		{KeyPatch{ExpiresAt: Value("2030-01-01"), RateLimit: Value(RateLimit{RequestsPerMinute: 5})},
			`{"expires_at":"2030-01-01","rate_limit":{"requests_per_minute":5}}`},
	} {
		b, err := json.Marshal(c.in)
		if err != nil || string(b) != c.want {
			t.Errorf("Marshal(%+v) = %s, %v; want %s", c.in, b, err, c.want)
		}
	}
}

// Decoding tells an absent member from a null one: the server needs both.
func TestNullableDecodesPresence(t *testing.T) {
	var p ProjectPatch
	if err := json.Unmarshal([]byte(`{"allowed_upstreams":null,"max_keys":7}`), &p); err != nil {
		t.Fatal(err)
	}
	if !p.AllowedUpstreams.Set || p.AllowedUpstreams.Value != nil {
		t.Errorf("allowed_upstreams null decoded as %+v", p.AllowedUpstreams)
	}
	if !p.MaxKeys.Set || p.MaxKeys.Value == nil || *p.MaxKeys.Value != 7 {
		t.Errorf("max_keys 7 decoded as %+v", p.MaxKeys)
	}
	if p.MaxDeployments.Set {
		t.Errorf("absent max_deployments decoded as set")
	}
	if err := json.Unmarshal([]byte(`{"max_keys":"x"}`), &p); err == nil {
		t.Error("a string max_keys decoded")
	}
}

// A page's end is null, as the origin answers, not "".
func TestPageEndIsNull(t *testing.T) {
	b, _ := json.Marshal(KeyPage{Items: []Key{}})
	if string(b) != `{"items":[],"next_cursor":null}` {
		t.Errorf("empty page = %s", b)
	}
}

// A quota is sent whole: its amount and refill, null for never; a null
// quota removes it.
func TestQuotaEncodes(t *testing.T) {
	n := int64(5)
	daily := "daily"
	for _, c := range []struct {
		in   KeyPatch
		want string
	}{
		{KeyPatch{Quota: Value(Quota{Tokens: &n})}, `{"quota":{"tokens":5,"refill":null}}`},
		{KeyPatch{Quota: Value(Quota{Requests: &n, Refill: &daily}), TokensPerMinute: Value(int64(9))}, `{"tokens_per_minute":9,"quota":{"requests":5,"refill":"daily"}}`},
		{KeyPatch{Quota: Null[Quota](), TokensPerDay: Null[int64]()}, `{"tokens_per_day":null,"quota":null}`},
	} {
		b, err := json.Marshal(c.in)
		if err != nil || string(b) != c.want {
			t.Errorf("Marshal = %s, %v; want %s", b, err, c.want)
		}
	}
}
