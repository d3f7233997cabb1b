package origin

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/internal/modelglob"
)

// A key's and a deployment's model allow-list and concurrency cap are
// bounded and checked: a refusal is 400 VALIDATION_ERROR naming the field,
// and nothing is committed.
func TestModelListsAndConcurrencyValidated(t *testing.T) {
	f := newRefusals(t)
	keys, deps := defaultKeys, defaultDeps
	many := make([]string, modelglob.MaxPatterns+1)
	for i := range many {
		many[i] = fmt.Sprint("m", i)
	}
	for _, tc := range []struct {
		what, field string
		body        map[string]any
	}{
		{"not a list", "models", map[string]any{"models": "mock-model"}},
		{"not strings", "models", map[string]any{"models": []any{1}}},
		{"too many", "models", map[string]any{"models": many}},
		{"an empty pattern", "models", map[string]any{"models": []string{""}}},
		{"a long pattern", "models", map[string]any{"models": []string{strings.Repeat("m", modelglob.MaxPatternLen+1)}}},
		{"a reserved wildcard", "models", map[string]any{"models": []string{"llama-?b"}}},
		{"a character class", "models", map[string]any{"models": []string{"llama-[78]b"}}},
		{"a space", "models", map[string]any{"models": []string{"my model"}}},
		{"a control character", "models", map[string]any{"models": []string{"m\x01"}}},
		{"zero concurrency", "max_concurrency", map[string]any{"max_concurrency": 0}},
		{"negative concurrency", "max_concurrency", map[string]any{"max_concurrency": -1}},
		{"huge concurrency", "max_concurrency", map[string]any{"max_concurrency": maxConcurrency + 1}},
		{"concurrency not a number", "max_concurrency", map[string]any{"max_concurrency": "4"}},
	} {
		for _, target := range []struct{ method, path string }{{"POST", keys}, {"PATCH", keys + "/" + f.keyID}, {"PATCH", deps + "/d"}} {
			f.refused(tc.what, tc.field, target.method, target.path, tc.body)
		}
	}
	f.unchanged()
}

// Lists and caps are stored, answered, and reset by null (or, for models,
// []): through keys and deployments alike.
func TestModelListsAndConcurrencyRoundTrip(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		s := startServer(t, cfg)
		c := newClient(t, s)
		keys, deps := "/v1/projects/default/keys", "/v1/projects/default/deployments"
		var d api.Deployment
		body := dep("chat", nil, "/")
		body["models"], body["max_concurrency"] = []string{"meta-llama/*"}, 8
		c.must(201, "POST", deps, body, &d)
		if strings.Join(d.Models, ",") != "meta-llama/*" || d.MaxConcurrency == nil || *d.MaxConcurrency != 8 {
			t.Fatalf("deployment %+v", d)
		}
		var k api.Key
		c.must(201, "POST", keys, map[string]any{"name": "ci", "deployments": []string{"chat"},
			"models": []string{"meta-llama/*", "mock-model", "mock-model"}, "max_concurrency": 2}, &k)
		if strings.Join(k.Models, ",") != "meta-llama/*,mock-model" || k.MaxConcurrency == nil || *k.MaxConcurrency != 2 {
			t.Fatalf("key %+v (duplicates are dropped)", k)
		}
		var got api.Key
		c.must(200, "GET", keys+"/"+k.ID, nil, &got)
		if strings.Join(got.Models, ",") != "meta-llama/*,mock-model" || got.MaxConcurrency == nil || *got.MaxConcurrency != 2 {
			t.Fatalf("key read back %+v", got)
		}
		// A patch of something else leaves them alone.
		c.must(200, "PATCH", keys+"/"+k.ID, map[string]any{"description": "x"}, &got)
		if len(got.Models) != 2 || got.MaxConcurrency == nil {
			t.Fatalf("unrelated patch changed them: %+v", got)
		}
		for _, reset := range []map[string]any{{"models": nil, "max_concurrency": nil}, {"models": []string{}}} {
			c.must(200, "PATCH", keys+"/"+k.ID, reset, &got)
			if got.Models == nil || len(got.Models) != 0 || got.MaxConcurrency != nil {
				t.Fatalf("after %v: %+v", reset, got)
			}
			raw, _ := json.Marshal(got)
			if !strings.Contains(string(raw), `"models":[]`) || !strings.Contains(string(raw), `"max_concurrency":null`) {
				t.Fatalf("answer %s", raw)
			}
		}
		c.must(200, "PATCH", deps+"/chat", map[string]any{"models": nil, "max_concurrency": nil}, &d)
		if len(d.Models) != 0 || d.MaxConcurrency != nil {
			t.Fatalf("deployment after reset %+v", d)
		}
		c.must(200, "PATCH", deps+"/chat", map[string]any{"models": []string{"x"}}, &d)
		if strings.Join(d.Models, ",") != "x" || d.MaxConcurrency != nil {
			t.Fatalf("deployment after patch %+v", d)
		}
	})
}
