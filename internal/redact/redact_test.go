package redact

import (
	"strings"
	"testing"
)

func TestURLs(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://keymesh:s3cret@nats.internal:4222", "nats://keymesh:REDACTED@nats.internal:4222"},
		{"tls://tok3n@nats.internal:4222", "tls://REDACTED@nats.internal:4222"},
		{"keymesh:s3cret@10.0.0.1:4222", "keymesh:REDACTED@10.0.0.1:4222"},
		{"nats://a:1,nats://u:s3cret@b:2, nats://tok3n@c:3", "nats://a:1,nats://u:REDACTED@b:2,nats://REDACTED@c:3"},
		{"nats://u:p%40ss%3Aw0rd@h:1", "nats://u:REDACTED@h:1"},
		{"nats://us er:s3cret@h:1", "REDACTED"},
		{"nats://u:s3cret@[::1", "REDACTED"},
	} {
		got := URLs(tc.in)
		if got != tc.want {
			t.Errorf("URLs(%q) = %q, want %q", tc.in, got, tc.want)
		}
		for _, secret := range []string{"s3cret", "tok3n", "w0rd"} {
			if strings.Contains(got, secret) {
				t.Errorf("URLs(%q) = %q keeps a secret", tc.in, got)
			}
		}
	}
}
