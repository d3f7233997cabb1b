package proxy

import (
	"bytes"
	"testing"

	"github.com/valyala/fasthttp"
)

// FuzzCredential: any header bytes give at most one credential, taken from
// what the client sent, never a panic.
func FuzzCredential(f *testing.F) {
	f.Add("km_abc", "Bearer xyz")
	f.Add("", "bearer   km_spaced  ")
	f.Add("", "Basic Zm9vOmJhcg==")
	f.Add(" ", "Bearer")
	f.Fuzz(func(t *testing.T, apiKey, auth string) {
		var h fasthttp.RequestHeader
		h.Set("X-API-Key", apiKey)
		h.Set("Authorization", auth)
		cred, fromAuth := credential(&h)
		if len(cred) == 0 {
			return
		}
		src := h.Peek("X-API-Key")
		if fromAuth {
			src = h.Peek("Authorization")
		}
		if !bytes.Contains(src, cred) {
			t.Fatalf("credential %q is not from the header it names", cred)
		}
	})
}

// FuzzParseBody: prompt counting never panics and never counts a negative
// or impossible number of characters.
func FuzzParseBody(f *testing.F) {
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":"Hello!"}],"stream":true}`))
	f.Add([]byte(`{"prompt":["a","b"],"input":[[1,2]]}`))
	f.Add([]byte(`{"messages":[{"content":[{"type":"text","text":"x"}]}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		n, _, err := parseBody(body)
		if err == nil && (n < 0 || n > len(body)) {
			t.Fatalf("counted %d characters in a %d-byte body", n, len(body))
		}
	})
}
