package edge

import (
	"bytes"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/keymesh/keymesh/event"
)

// hostileStrings are what a client could get into a record's strings (a
// model name comes from the request body).
var hostileStrings = []string{
	"", "plain", `quo"te`, `back\slash`, "<script>&amp;</script>", "\x00\x01\x1f\x7f",
	"\b\f\n\r\t", "tab\there", "日本語", "emoji 🦙", "\u2028line\u2029para", "\xff\xfe bad utf8 \xc3",
	"\xed\xa0\x80 surrogate", "a\u0085b", strings.Repeat("x", usageMaxString), `{"id":"forged"}`,
	"\u00e9\u0301", "\uFFFD", "\x80", "trailing\\",
}

// The hand-written encoder writes, byte for byte, what json.Marshal does
// (the origin decodes records with encoding/json), for every field, set
// or empty, hostile strings and times of every zone.
func TestUsageJSONMatchesMarshal(t *testing.T) {
	times := []time.Time{
		{}, time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC), time.Date(2026, 12, 2, 12, 0, 0, 123456789, time.UTC),
		time.Date(2026, 12, 2, 12, 0, 0, 120000000, time.FixedZone("x", -(5*3600+30*60))),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 1, time.FixedZone("y", 14*3600)),
		time.Now(), // with a monotonic reading
	}
	var recs []event.Usage
	for i, s := range hostileStrings {
		recs = append(recs, event.Usage{ID: s, Edge: s, KeyID: s, Project: s, Deployment: s, Model: s,
			PromptTokens: int64(i) - 5, CompletionTokens: 1 << 62, CachedTokens: int64(i % 3), Estimated: i%2 == 0,
			Status: 200 + i, DurationMS: -int64(i), Time: times[i%len(times)]})
	}
	for _, tm := range times {
		recs = append(recs, event.Usage{ID: "id", Time: tm}, event.Usage{ID: "id", Time: tm, PromptTokens: -1 << 63})
	}
	// Each record by a new encoder (nothing remembered), then all by one,
	// as the writer's: its memos hit where a string repeats the record
	// before's and miss where it does not.
	enc := new(usageEncoder)
	for i := range recs {
		checkUsageJSON(t, new(usageEncoder), &recs[i])
		checkUsageJSON(t, enc, &recs[i])
	}
}

// checkUsageJSON checks enc's encoding of r against json.Marshal's.
func checkUsageJSON(t *testing.T, enc *usageEncoder, r *event.Usage) {
	t.Helper()
	want, werr := json.Marshal(r)
	got, ok := enc.appendUsageJSON([]byte("prefix"), r)
	if werr != nil || !ok {
		if werr == nil || ok {
			t.Fatalf("%+v: json.Marshal error %v, appendUsageJSON ok %v", r, werr, ok)
		}
		return
	}
	if !bytes.HasPrefix(got, []byte("prefix")) || !bytes.Equal(got[len("prefix"):], want) {
		t.Fatalf("%+v:\n got %s\nwant %s", r, got, want)
	}
	var back, wantBack event.Usage
	if err := json.Unmarshal(got[len("prefix"):], &back); err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal(want, &wantBack)
	if !reflect.DeepEqual(back, wantBack) {
		t.Fatalf("decoded %+v, want %+v", back, wantBack)
	}
}

// Times json.Marshal refuses are refused (and the record counted as a
// spool error, as before).
func TestUsageJSONRefusesWhatMarshalRefuses(t *testing.T) {
	for _, tm := range []time.Time{
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("z", 24*3600)),
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("z", -25*3600)),
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("z", 100*3600)),
	} {
		r := &event.Usage{ID: "x", Time: tm}
		if _, err := json.Marshal(r); err == nil {
			t.Fatalf("%v: json.Marshal took it", tm)
		}
		if _, ok := new(usageEncoder).appendUsageJSON(nil, r); ok {
			t.Fatalf("%v: appendUsageJSON took it", tm)
		}
	}
}

// The encoder knows every field of event.Usage: a field added there
// fails here until appendUsageJSON writes it.
func TestUsageJSONKnowsEveryField(t *testing.T) {
	var tags []string
	ty := reflect.TypeFor[event.Usage]()
	for i := range ty.NumField() {
		tags = append(tags, ty.Field(i).Name+" "+ty.Field(i).Type.String()+" "+ty.Field(i).Tag.Get("json"))
	}
	want := []string{"ID string id", "Edge string edge", "KeyID string key_id,omitempty", "Project string project",
		"Deployment string deployment", "Model string model,omitempty", "PromptTokens int64 prompt_tokens",
		"CompletionTokens int64 completion_tokens", "CachedTokens int64 cached_tokens,omitempty",
		"Estimated bool estimated,omitempty", "Status int status", "DurationMS int64 duration_ms", "Time time.Time time"}
	if !slices.Equal(tags, want) {
		t.Fatalf("event.Usage changed; update appendUsageJSON and this list:\n%q", tags)
	}
}

// The encoder allocates nothing when its buffer has room.
func TestUsageJSONDoesNotAllocate(t *testing.T) {
	r := benchRec(1)
	buf := make([]byte, 0, 1024)
	enc := new(usageEncoder)
	_, _ = enc.appendUsageJSON(buf[:0], r) // its memos take their buffers once
	if n := testing.AllocsPerRun(100, func() { _, _ = enc.appendUsageJSON(buf[:0], r) }); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}

func FuzzUsageJSON(f *testing.F) {
	for i, s := range hostileStrings {
		f.Add(s, "m"+s, int64(i), int64(-i), i%2 == 0, 200, int64(1e9)*int64(i), int32(i*900))
	}
	f.Fuzz(func(t *testing.T, s, model string, n, c int64, est bool, status int, unixNano int64, zone int32) {
		tm := time.Unix(0, unixNano).In(time.FixedZone("f", int(zone)))
		r := &event.Usage{ID: s, Edge: model, KeyID: s, Project: model, Deployment: s, Model: model,
			PromptTokens: n, CompletionTokens: c, CachedTokens: n ^ c, Estimated: est, Status: status, DurationMS: c, Time: tm}
		// One encoder: r (nothing remembered), then r with its strings
		// swapped (each memo misses), then r again.
		enc := new(usageEncoder)
		swapped := *r
		swapped.Edge, swapped.KeyID, swapped.Project, swapped.Deployment, swapped.Model = s, model, s, model, s
		for _, rec := range []*event.Usage{r, &swapped, r} {
			checkUsageJSON(t, enc, rec)
		}
	})
}

// recordID reads the id the writer put first, without a decoder for a
// plain one and with it for anything else, as the decoder would.
func TestUsageRecordIDFromJSON(t *testing.T) {
	for _, s := range append(slices.Clone(hostileStrings), "e1-0123456789abcdef", "u-0001") {
		data, err := json.Marshal(&event.Usage{ID: s, Edge: "e"})
		if err != nil {
			t.Fatal(err)
		}
		var want struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(data, &want)
		id, ok := recordID(data)
		if ok != (want.ID != "") || id != want.ID {
			t.Fatalf("%q: recordID %q %v, decoder %q", data, id, ok, want.ID)
		}
	}
	for _, data := range []string{`{"id":"x`, `{"id":""}`, `{"edge":"e","id":"later"}`, `{"id":"a\"b"}`, `not json`} {
		var want struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal([]byte(data), &want)
		if id, ok := recordID([]byte(data)); ok != (want.ID != "") || id != want.ID {
			t.Fatalf("%s: recordID %q %v, decoder %q", data, id, ok, want.ID)
		}
	}
}

// Ids given to records without one are distinct and carry this run's
// random prefix (a restart draws another, so none is made twice).
func TestUsageRecordIDsUnique(t *testing.T) {
	seen := map[string]bool{}
	for range 10000 {
		id := newRecordID()
		if seen[id] || !strings.HasPrefix(id, usageIDPrefix) || len(id) > 40 || !utf8.ValidString(id) {
			t.Fatalf("id %q (seen %v)", id, seen[id])
		}
		seen[id] = true
	}
	if len(usageIDPrefix) != 17 {
		t.Fatalf("prefix %q", usageIDPrefix)
	}
}
