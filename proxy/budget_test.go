package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

// pricedUpstream answers with the usage its X-Prompt, X-Completion and
// X-Cached headers name.
func pricedUpstream(w http.ResponseWriter, r *http.Request) {
	n := func(h string) int { v, _ := strconv.Atoi(r.Header.Get(h)); return v }
	w.Header().Set("Content-Type", "application/json")
	if st := n("X-Status"); st != 0 {
		w.WriteHeader(st)
		_, _ = io.WriteString(w, `{"error":{"message":"boom"}}`)
		return
	}
	fmt.Fprintf(w, `{"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"prompt_tokens_details":{"cached_tokens":%d}}}`,
		n("X-Prompt"), n("X-Completion"), n("X-Cached"))
}

// testPricing: a prompt token costs 1 nano-unit, a cached one 0.5 (so
// two cost 1), a completion token 2.
func testPricing() *event.Pricing {
	cached := int64(500_000)
	return &event.Pricing{Currency: "USD", Prompt: 1_000_000, Completion: 2_000_000, Cached: &cached}
}

type budgetSpec struct {
	key, dep, project *event.TokenLimits
}

// startBudget is an edge with dep_1 (priced by testPricing, on /) and
// dep_2 (unpriced, on /two) of one project, and one key linked to both.
func startBudget(t *testing.T, spec budgetSpec) *tokenSetup {
	t.Helper()
	return startBudgetWith(t, spec, pricedUpstream)
}

// startBudgetWith is startBudget with the upstream h.
func startBudgetWith(t *testing.T, spec budgetSpec, h http.HandlerFunc) *tokenSetup {
	t.Helper()
	ts := &tokenSetup{up: newUpstream(t, h), clock: &testClock{t: time.Date(2030, 5, 31, 12, 0, 0, 0, time.UTC)}}
	secret, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	hash, _ := apikey.ParseString(secret)
	k := &event.Key{ID: "key_1", Project: "prj_1", Secrets: []event.Secret{{Hash: hash}},
		Permissions: event.DefaultPermissions, Deployments: []string{"dep_1", "dep_2"}, Tokens: spec.key}
	ts.secrets[0] = secret
	d1, d2 := deployment("dep_1", ts.up.URL, true), deployment("dep_2", ts.up.URL, true)
	d2.PathPrefix = "/two"
	d1.Pricing, d1.Tokens = testPricing(), spec.dep
	d1.ProjectTokens, d2.ProjectTokens = spec.project, spec.project
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{d1, d2}, 1), keys: map[apikey.Hash]*cache.Key{hash: cache.NewKey(k, 1)}}
	ts.testProxy = startProxyPrepared(t, st, nil, func(p *Proxy) { p.tokens.now = ts.clock.now })
	return ts
}

// spend posts a completion to path with a 4-character prompt (1 token
// estimated) naming maxTokens; the upstream reports the usage given.
func (ts *tokenSetup) spend(t *testing.T, path string, maxTokens, prompt, completion, cached int) (*http.Response, string) {
	t.Helper()
	return ts.postBody(t, 0, path, fmt.Sprintf(`{"model":"m","prompt":"abcd","max_tokens":%d}`, maxTokens), map[string]string{
		"X-Prompt": strconv.Itoa(prompt), "X-Completion": strconv.Itoa(completion), "X-Cached": strconv.Itoa(cached)})
}

// budgetLeft is what GET /v1/key says is left of the key's budget.
func (ts *tokenSetup) budgetLeft(t *testing.T) (maxBudget, left string) {
	t.Helper()
	resp, body := do(t, client(t), "GET", ts.url+"/v1/key", "", map[string]string{"X-API-Key": ts.secrets[0]})
	wantOK(t, resp, body)
	var got struct {
		MaxBudget *json.Number `json:"max_budget"`
		Remaining struct {
			Budget *json.Number `json:"budget"`
		} `json:"remaining"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil || got.MaxBudget == nil || got.Remaining.Budget == nil {
		t.Fatalf("GET /v1/key: %s (%v)", body, err)
	}
	return got.MaxBudget.String(), got.Remaining.Budget.String()
}

// A key's budget: admission reserves the estimated prompt and max_tokens
// at the deployment's prices, settlement keeps the metered cost, a request
// whose reservation does not fit is refused 429 insufficient_quota without
// reaching the upstream and costs nothing, and an unpriced deployment
// spends nothing.
func TestBudgetAdmissionAndSettlement(t *testing.T) {
	ts := startBudget(t, budgetSpec{key: &event.TokenLimits{Budget: &event.Budget{MaxNanos: 1000}}})
	// Reserves 1 + 2*100 = 201; spends 10-4 + 4*0.5 + 2*50 = 108.
	resp, body := ts.spend(t, "/v1/completions", 100, 10, 50, 4)
	wantOK(t, resp, body)
	ts.heldIs(t, 0)
	if max, left := ts.budgetLeft(t); max != "0.000001" || left != "0.000000892" {
		t.Fatalf("budget %s, left %s; want 0.000001 and 0.000000892 (108 spent)", max, left)
	}
	// 1 + 2*446 = 893 > 892: refused, never admissible as it is.
	hits := len(ts.up.requests())
	resp, body = ts.spend(t, "/v1/completions", 446, 1, 1, 0)
	wantError(t, resp, body, 429, apierror.InsufficientQuota)
	wantType(t, body, "insufficient_quota")
	if resp.Header.Get("X-Should-Retry") != "false" || resp.Header.Get("Retry-After") != "" {
		t.Fatalf("a budget that never refills: X-Should-Retry %q, Retry-After %q", resp.Header.Get("X-Should-Retry"), resp.Header.Get("Retry-After"))
	}
	if n := len(ts.up.requests()); n != hits {
		t.Fatalf("the refused request reached the upstream (%d requests, want %d)", n, hits)
	}
	if _, left := ts.budgetLeft(t); left != "0.000000892" {
		t.Fatalf("a refused request spent: %s left", left)
	}
	// 1 + 2*445 = 891 fits; it spends 1 + 2*445 = 891 of 892.
	resp, body = ts.spend(t, "/v1/completions", 445, 1, 445, 0)
	wantOK(t, resp, body)
	if _, left := ts.budgetLeft(t); left != "0.000000001" {
		t.Fatalf("left %s after spending 891 of 892", left)
	}
	// A request costs at least one nano-unit: the last one still fits one
	// reserving nothing but its prompt...
	resp, body = ts.spend(t, "/v1/completions", 0, 1, 0, 0)
	wantOK(t, resp, body)
	// ... and then nothing priced does.
	resp, body = ts.spend(t, "/v1/completions", 0, 0, 0, 0)
	wantError(t, resp, body, 429, apierror.InsufficientQuota)
	// The unpriced deployment is not bounded by the spent budget.
	resp, body = ts.spend(t, "/two/v1/completions", 1000, 1000, 1000, 0)
	wantOK(t, resp, body)
	ts.heldIs(t, 0)
	if _, left := ts.budgetLeft(t); left != "0" {
		t.Fatalf("left %s, want 0", left)
	}
}

// Settlement spends the metered cost, also above the reservation (the
// upstream ignored max_tokens): the budget goes to its cap, never past it
// into a refusal of what was already served. A request the upstream
// failed (no usage) costs what the meter found.
func TestBudgetSettlesMeteredCost(t *testing.T) {
	ts := startBudget(t, budgetSpec{key: &event.TokenLimits{Budget: &event.Budget{MaxNanos: 10_000}}})
	resp, body := ts.spend(t, "/v1/completions", 10, 100, 1000, 0) // reserved 21, spent 2100
	wantOK(t, resp, body)
	ts.heldIs(t, 0)
	if _, left := ts.budgetLeft(t); left != "0.0000079" {
		t.Fatalf("left %s, want 0.0000079 (2100 spent)", left)
	}
	resp, _ = ts.postBody(t, 0, "/v1/completions", `{"model":"m","prompt":"abcd","max_tokens":100}`, map[string]string{"X-Status": "500"})
	if resp.StatusCode != 500 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	ts.heldIs(t, 0)
	if _, left := ts.budgetLeft(t); left != "0.0000079" {
		t.Fatalf("left %s after a failed request with no usage, want 0.0000079", left)
	}
}

// A deployment's and a project's budgets count every key's requests to
// them; a daily budget refills at 00:00 UTC and says so in Retry-After.
func TestBudgetScopesAndRefill(t *testing.T) {
	for name, spec := range map[string]budgetSpec{
		"deployment": {dep: &event.TokenLimits{Budget: &event.Budget{MaxNanos: 300, Refill: event.QuotaRefillDaily}}},
		"project":    {project: &event.TokenLimits{Budget: &event.Budget{MaxNanos: 300, Refill: event.QuotaRefillDaily}}},
	} {
		t.Run(name, func(t *testing.T) {
			ts := startBudget(t, spec)
			resp, body := ts.spend(t, "/v1/completions", 100, 1, 100, 0) // reserves 201, spends 201
			wantOK(t, resp, body)
			resp, body = ts.spend(t, "/v1/completions", 100, 1, 100, 0) // 201 > 99 left
			wantError(t, resp, body, 429, apierror.InsufficientQuota)
			if resp.Header.Get("Retry-After") != strconv.Itoa(12*3600) || resp.Header.Get("X-Should-Retry") != "" {
				t.Fatalf("Retry-After %q, X-Should-Retry %q: want 12 h, to midnight", resp.Header.Get("Retry-After"), resp.Header.Get("X-Should-Retry"))
			}
			resp, body = ts.spend(t, "/v1/completions", 1000, 1, 100, 0) // 2001 > the whole budget
			wantError(t, resp, body, 429, apierror.InsufficientQuota)
			if resp.Header.Get("X-Should-Retry") != "false" {
				t.Fatalf("a reservation over the whole budget: X-Should-Retry %q", resp.Header.Get("X-Should-Retry"))
			}
			ts.clock.advance(12 * time.Hour)
			resp, body = ts.spend(t, "/v1/completions", 100, 1, 100, 0)
			wantOK(t, resp, body)
			ts.heldIs(t, 0)
		})
	}
}

func TestBudgetCosts(t *testing.T) {
	d := &event.Deployment{Pricing: testPricing()}
	if got := reservedCost(d, 9, 10); got != 3+20 { // ceil(9/4) prompt tokens
		t.Fatalf("reservedCost = %d, want 23", got)
	}
	if got := reservedCost(&event.Deployment{}, 9, 10); got != 0 {
		t.Fatalf("unpriced reservedCost = %d", got)
	}
	if got := meteredCost(d, &usageCounts{prompt: 10, completion: 3, cached: 4, ok: true}); got != 6+2+6 {
		t.Fatalf("meteredCost = %d, want 14", got)
	}
	if got := meteredCost(d, &usageCounts{prompt: 10}); got != 0 {
		t.Fatalf("meteredCost without usage = %d, want 0", got)
	}
}

// A reservation cancelled after admission (a later refusal: the request
// rate limit) gives its cost back whole; a settlement in a later period
// counts what was spent in the new one.
func TestBudgetCancelAndPeriods(t *testing.T) {
	clock := &testClock{t: time.Date(2030, 5, 31, 23, 59, 0, 0, time.UTC)}
	tt := newTokenTable(clock.now, 1000)
	lim := &event.TokenLimits{Budget: &event.Budget{MaxNanos: 100, Refill: event.QuotaRefillDaily}}
	bounds := []tokenBound{{"key_1", scopeKey, lim}}
	left := func() int64 { return tt.remaining(tokenID{"key_1", scopeKey, tokBudget}, 100, event.QuotaRefillDaily) }
	h, res := tt.reserveCost(bounds, 0, 60)
	if h == nil {
		t.Fatalf("refused: %v", res.refusal)
	}
	if left() != 40 {
		t.Fatalf("left %d after reserving 60", left())
	}
	tt.cancel(h)
	if left() != 100 {
		t.Fatalf("left %d after cancelling, want 100", left())
	}
	if h, _ = tt.reserveCost(bounds, 0, 101); h != nil {
		t.Fatal("a reservation over the whole budget was admitted")
	}
	h, _ = tt.reserveCost(bounds, 0, 60)
	clock.advance(2 * time.Minute) // into the next day
	h.spent = 30
	tt.settle(h, 0)
	if left() != 70 {
		t.Fatalf("left %d: the next day's budget holds what was spent in it (30)", left())
	}
	if tt.heldTotal() != 0 {
		t.Fatal("a reservation is still held")
	}
}

// A stream past its reservation extends its spend caps as its token
// bounds: each step costs its completion tokens at the deployment's
// pricing, and when the cap refuses, the stream is cut after a whole event
// with the spend-cap error event and [DONE], counted as a quota cut and
// settled at what was relayed — the cap spent to within one step, never
// past it by more. On the unpriced deployment the same stream costs
// nothing and is relayed whole.
func TestStreamCutAtSpendCap(t *testing.T) {
	const maxNanos = 400     // 200 completion tokens at 2 nano-units each
	up := newSlowStream(500) // 1,000 completion tokens
	ts := startBudgetWith(t, budgetSpec{key: &event.TokenLimits{Budget: &event.Budget{MaxNanos: maxNanos}}}, up.serve)

	resp, body := ts.postBody(t, 0, "/two/v1/chat/completions", streamBody, nil)
	wantOK(t, resp, body)
	if body != up.all() {
		t.Fatalf("a stream on the unpriced deployment was changed: %d bytes of %d", len(body), len(up.all()))
	}

	resp, body = ts.postBody(t, 0, "/v1/chat/completions", streamBody, nil)
	wantOK(t, resp, body)
	tail := string(streamCutEvent(reasonQuota, true))
	if !strings.HasSuffix(body, tail) || !strings.Contains(tail, "max_budget") {
		t.Fatalf("the stream does not end with the spend-cap event: ...%q", body[max(0, len(body)-300):])
	}
	relayed := strings.TrimSuffix(body, tail)
	if !strings.HasPrefix(up.all(), relayed) || !strings.HasSuffix(relayed, "\n\n") {
		t.Fatalf("relayed %q is not whole events of the upstream's", relayed)
	}
	up.goneIs(t, 1)
	ts.heldIs(t, 0)
	if got := ts.counter(t, "keymesh_edge_streams_cut_total", "reason", "quota"); got != 1 {
		t.Fatalf("streams cut counted %v", got)
	}
	rec := cutRecord(t, ts.testProxy)
	if rec.CompletionTokens == nil || rec.PromptTokens == nil {
		t.Fatalf("record %+v", rec)
	}
	// At most the cap and the event that found it spent (2 tokens at 2);
	// at least the cap less what the last refused extension asked.
	const event = 2 * 2
	spent := testPricing().Cost(*rec.PromptTokens, *rec.CompletionTokens, 0)
	if spent > maxNanos+event || spent < maxNanos-event {
		t.Fatalf("the cut stream spent %d nano-units of a cap of %d (%d completion tokens)", spent, maxNanos, *rec.CompletionTokens)
	}
	want := "0"
	if spent < maxNanos {
		want = fmt.Sprintf("0.%09d", maxNanos-spent)
	}
	if _, left := ts.budgetLeft(t); left != want {
		t.Fatalf("%s left after spending %d of %d, want %s", left, spent, maxNanos, want)
	}
}

// A stream's extension is checked against a spend cap across edges as
// admission is (global.go): what the others reported spending leaves no
// room for a step here though this edge's own counter has it, and the
// refusal says it was the cap (the cut's error event names max_budget).
func TestBudgetExtendGlobal(t *testing.T) {
	es := newEdges(t, 2, nil)
	bounds := []tokenBound{{"k", scopeKey, &event.TokenLimits{Budget: &event.Budget{MaxNanos: 1000}}}}
	h2, _ := es.ps[1].tokens.reserveCost(bounds, 0, 900)
	h2.spent = 900
	es.ps[1].tokens.settle(h2, 0)
	es.sync(t, true)
	h1, tr := es.ps[0].tokens.reserveCost(bounds, 0, 1)
	if h1 == nil {
		t.Fatalf("refused: %+v", tr)
	}
	h1.pricing = testPricing() // 2 nano-units a completion token
	if why, refusal, ok := es.ps[0].tokens.extend(h1, 60); ok || why != reasonQuota || refusal != errBudget {
		t.Fatalf("extend by 60 tokens (120 nano-units) past the cap's room across edges (99): %v %v %v", why, refusal, ok)
	}
	// (Near the cap an edge has only a share of the room left: 40 fit it.)
	if why, _, ok := es.ps[0].tokens.extend(h1, 20); !ok || h1.covered != 20 {
		t.Fatalf("extend by 20 tokens (40 nano-units) within this edge's share of the room refused: %v, covers %d", why, h1.covered)
	}
	h1.spent = 41
	es.ps[0].tokens.settle(h1, 20)
	if n := es.ps[0].tokens.heldTotal(); n != 0 {
		t.Fatalf("%d held", n)
	}
}

// A cap smaller than one extension step's cost refuses it as too large
// (errBudgetTooLarge, not errBudget): the stream it cuts still gets the
// spend-cap event, not the token quota's.
func TestStreamCutAtSmallSpendCap(t *testing.T) {
	// The prompt's 1 fits; the first event's 3 tokens (6 nano-units, the
	// prompt counted in the running total) cost more than the whole cap.
	const maxNanos = 5
	up := newSlowStream(500)
	ts := startBudgetWith(t, budgetSpec{key: &event.TokenLimits{Budget: &event.Budget{MaxNanos: maxNanos}}}, up.serve)
	resp, body := ts.postBody(t, 0, "/v1/chat/completions", streamBody, nil)
	wantOK(t, resp, body)
	if tail := string(streamCutEvent(reasonQuota, true)); !strings.HasSuffix(body, tail) {
		t.Fatalf("the stream does not end with the spend-cap event: ...%q", body[max(0, len(body)-300):])
	}
	up.goneIs(t, 1)
	ts.heldIs(t, 0)
}
