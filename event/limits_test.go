package event

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func validReport() *LimitReport {
	return &LimitReport{Edge: "edge-1", Boot: "b1", TimeMS: 1700000000000, Entries: []LimitEntry{
		{Scope: LimitScopeKey, ID: "key_1", Kind: LimitRPM, Window: 170000000, Used: 12},
		{Scope: LimitScopeProject, ID: "prj_1", Kind: LimitQuotaTokens, Window: 24313, Used: 1 << 40},
	}}
}

func TestLimitReportRoundTrip(t *testing.T) {
	r := validReport()
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalLimitReport(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Fatalf("got %+v, want %+v", got, r)
	}
	if per := (len(b) - 50) / len(r.Entries); per > 80 {
		t.Errorf("%d bytes an entry: not compact (%s)", per, b)
	}
}

// TestLimitReportBounds: every bound Validate states refuses, and
// Unmarshal refuses what Validate does, plus what is no report.
func TestLimitReportBounds(t *testing.T) {
	long := strings.Repeat("x", MaxLimitIDBytes+1)
	for name, mod := range map[string]func(*LimitReport){
		"no edge":        func(r *LimitReport) { r.Edge = "" },
		"long edge":      func(r *LimitReport) { r.Edge = long },
		"no boot":        func(r *LimitReport) { r.Boot = "" },
		"long boot":      func(r *LimitReport) { r.Boot = long },
		"negative time":  func(r *LimitReport) { r.TimeMS = -1 },
		"unknown scope":  func(r *LimitReport) { r.Entries[0].Scope = "team" },
		"unknown kind":   func(r *LimitReport) { r.Entries[0].Kind = "rps" },
		"no id":          func(r *LimitReport) { r.Entries[0].ID = "" },
		"long id":        func(r *LimitReport) { r.Entries[0].ID = long },
		"negative used":  func(r *LimitReport) { r.Entries[0].Used = -1 },
		"negative win":   func(r *LimitReport) { r.Entries[0].Window = -1 },
		"too many":       func(r *LimitReport) { r.Entries = make([]LimitEntry, MaxLimitEntries+1) },
		"too many valid": func(r *LimitReport) { r.Entries = repeat(r.Entries[0], MaxLimitEntries+1) },
	} {
		r := validReport()
		mod(r)
		if err := r.Validate(); !errors.Is(err, ErrLimitReport) {
			t.Errorf("%s: Validate = %v", name, err)
		}
		if _, err := r.Marshal(); !errors.Is(err, ErrLimitReport) {
			t.Errorf("%s: Marshal = %v", name, err)
		}
	}
	if r := validReport(); r.Validate() != nil {
		t.Fatal("the valid report is refused")
	}
	max := validReport()
	max.Entries = repeat(LimitEntry{Scope: LimitScopeDeployment, ID: strings.Repeat("i", MaxLimitIDBytes), Kind: LimitQuotaRequests,
		Window: 1 << 62, Used: 1 << 62}, MaxLimitEntries)
	b, err := max.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > MaxLimitReportBytes {
		t.Fatalf("the largest valid report is %d bytes, over MaxLimitReportBytes", len(b))
	}
	if _, err := UnmarshalLimitReport(b); err != nil {
		t.Fatalf("the largest valid report: %v", err)
	}
	for _, s := range []string{``, `null`, `[]`, `{"edge":"e","boot":"b","t":1,"e":[]} {}`, `{"edge":"e","boot":"b","t":1,"x":1}`,
		`{"edge":"e","boot":"b","t":1,"e":[{"s":"key","i":"k","k":"rpm","w":1.5,"u":1}]}`,
		`{"edge":"e","boot":"b","t":1,"e":[{"s":"key","i":"k","k":"rpm","w":1,"u":-1}]}`,
		`{"edge":"e","t":1,"e":[]}`, `{"edge":"e","boot":"b","t":1,"e":[{"s":"key","i":"k","k":"rpm","w":1,"u":1,"z":0}]}`,
		string(make([]byte, MaxLimitReportBytes+1))} {
		if _, err := UnmarshalLimitReport([]byte(s)); !errors.Is(err, ErrLimitReport) {
			t.Errorf("%.60q: %v", s, err)
		}
	}
}

func repeat(e LimitEntry, n int) []LimitEntry {
	out := make([]LimitEntry, n)
	for i := range out {
		out[i] = e
	}
	return out
}

func TestLimitReportSplit(t *testing.T) {
	r := validReport()
	r.Entries = repeat(r.Entries[0], 10)
	parts := r.Split(4)
	if len(parts) != 3 || len(parts[0].Entries) != 4 || len(parts[2].Entries) != 2 {
		t.Fatalf("split into %d", len(parts))
	}
	n := 0
	for _, p := range parts {
		if p.Edge != r.Edge || p.Boot != r.Boot || p.TimeMS != r.TimeMS || p.Validate() != nil {
			t.Fatalf("part %+v", p)
		}
		n += len(p.Entries)
	}
	if n != 10 {
		t.Fatalf("%d entries in the parts", n)
	}
	if got := r.Split(0); len(got) != 10 {
		t.Fatalf("Split(0) gave %d", len(got))
	}
}

// FuzzUnmarshalLimitReport: the decoder never panics, and whatever it
// accepts is valid and encodes back to a report it decodes to the same.
func FuzzUnmarshalLimitReport(f *testing.F) {
	b, _ := validReport().Marshal()
	f.Add(b)
	f.Add([]byte(`{"edge":"e","boot":"b","t":0,"e":null}`))
	f.Add([]byte(`{"edge":"e","boot":"b","t":0,"full":true,"e":[{"s":"project","i":"p","k":"budget","w":0,"u":0}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := UnmarshalLimitReport(b)
		if err != nil {
			if !errors.Is(err, ErrLimitReport) {
				t.Fatalf("error not ErrLimitReport: %v", err)
			}
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted an invalid report: %v", err)
		}
		again, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		r2, err := UnmarshalLimitReport(again)
		if err != nil || !reflect.DeepEqual(normal(r), normal(r2)) {
			t.Fatalf("round trip: %v, %+v != %+v", err, r, r2)
		}
	})
}

func normal(r *LimitReport) *LimitReport {
	c := *r
	if len(c.Entries) == 0 {
		c.Entries = nil
	}
	return &c
}
