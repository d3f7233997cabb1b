package edge

import (
	"reflect"
	"testing"
)

// A zero field takes DefaultConfig's value: there is one copy of the
// edge's defaults. Only what zero means "off" for stays off.
func TestZeroConfigTakesDefaultConfig(t *testing.T) {
	want := DefaultConfig()
	want.AdminListen, want.DataDir = "", "" // zero: no admin listener, nothing persisted
	if got := withDefaults(Config{}); !reflect.DeepEqual(got, want) {
		t.Fatalf("a zero Config became\n%+v\nwant\n%+v", got, want)
	}
	// What is set is kept, and MaxStaleness may be negative (no guard).
	set := Config{Listen: "127.0.0.1:1", MaxKeys: 7, MaxStaleness: -1, CORSAllowedMethods: []string{"PUT"}}
	got := withDefaults(set)
	if got.Listen != set.Listen || got.MaxKeys != 7 || got.MaxStaleness != -1 || !reflect.DeepEqual(got.CORSAllowedMethods, []string{"PUT"}) {
		t.Fatalf("set fields changed: %+v", got)
	}
}

// Every field DefaultConfig documents a default for is filled in, so that
// cmd/edge's flags show the real values.
func TestDefaultConfigFilledIn(t *testing.T) {
	d := DefaultConfig()
	v := reflect.ValueOf(d)
	optional := map[string]bool{ // no default: off, none or required
		"NATSCreds": true, "NATSTLSCA": true, "NATSTLSCert": true, "NATSTLSKey": true, "OriginPublicKey": true,
		"SecretsDir": true, "TLSCert": true, "TLSKey": true, "TLSClientCA": true, "CORSAllowedOrigins": true,
		"FailOpen": true, "UpstreamAllow": true, "ID": true, "AuditFile": true,
	}
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if !optional[name] && v.Field(i).IsZero() {
			t.Errorf("DefaultConfig leaves %s zero", name)
		}
	}
	if d.Gossip.Listen == "" {
		t.Error("DefaultConfig leaves Gossip.Listen empty")
	}
}
