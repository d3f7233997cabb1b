package proxy

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
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

// FuzzParseBody: prompt counting never panics, never counts a negative or
// impossible number of characters, and is never more lenient than Go's own
// JSON decoder: whatever encoding/json accepts, parseBody accepts too, with
// at least as many prompt characters, and streaming whenever it streams.
func FuzzParseBody(f *testing.F) {
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":"Hello!"}],"stream":true}`))
	f.Add([]byte(`{"prompt":["a","b"],"input":[[1,2]]}`))
	f.Add([]byte(`{"messages":[{"content":[{"type":"text","text":"x"}]}]}`))
	f.Add([]byte(`{"Stream":true,"stream":false,"PROMPT":"ab\u00e9"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		n, stream, err := parseBody(body)
		if err == nil && (n < 0 || n > len(body)) {
			t.Fatalf("counted %d characters in a %d-byte body", n, len(body))
		}
		refN, refStream, refErr := referenceParseBody(body)
		if refErr != nil || nesting(body) > fastjson.MaxDepth {
			return
		}
		if err != nil {
			t.Fatalf("encoding/json accepts %q, parseBody refuses it: %v", body, err)
		}
		if n < refN || (refStream && !stream) {
			t.Fatalf("%q: parseBody sees %d chars, stream %v; encoding/json %d, %v", body, n, stream, refN, refStream)
		}
	})
}

// nesting is an upper bound of how deeply body nests arrays and objects.
func nesting(body []byte) int {
	depth, most := 0, 0
	for _, c := range body {
		switch c {
		case '[', '{':
			depth++
			most = max(most, depth)
		case ']', '}':
			depth--
		}
	}
	return most
}

// referenceParseBody is parseBody written with encoding/json, which the
// edge used before: the fuzz target holds the fast parser to it.
func referenceParseBody(raw []byte) (chars int, stream bool, err error) {
	var b struct {
		Stream   json.RawMessage `json:"stream"`
		Prompt   json.RawMessage `json:"prompt"`
		Input    json.RawMessage `json:"input"`
		Messages []struct {
			Content json.RawMessage `json:"content"`
		} `json:"messages"`
	}
	if err := json.Unmarshal(raw, &b); err != nil {
		return 0, false, err
	}
	if len(b.Stream) > 0 {
		if err := json.Unmarshal(b.Stream, &stream); err != nil && string(b.Stream) != "null" {
			return 0, false, err
		}
	}
	for _, field := range []json.RawMessage{b.Prompt, b.Input} {
		n, err := referenceTextChars(field)
		if err != nil {
			return 0, false, err
		}
		chars += n
	}
	for _, m := range b.Messages {
		n, err := referenceTextChars(m.Content)
		if err != nil {
			return 0, false, err
		}
		chars += n
	}
	return chars, stream, nil
}

func referenceTextChars(raw json.RawMessage) (int, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, err
		}
		return utf8.RuneCountInString(s), nil
	case '[':
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return 0, err
		}
		total := 0
		for _, it := range items {
			it = bytes.TrimSpace(it)
			if len(it) > 0 && it[0] == '{' {
				var part struct {
					Text string `json:"text"`
				}
				if err := json.Unmarshal(it, &part); err != nil {
					return 0, err
				}
				total += utf8.RuneCountInString(part.Text)
				continue
			}
			n, err := referenceTextChars(it)
			if err != nil {
				return 0, err
			}
			total += n
		}
		return total, nil
	}
	return 0, nil
}
