package event

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// A balance record seals and opens like every record, and CheckBalances
// refuses what an edge must not act on: another kind, no balances or too
// many, an unknown scope or kind (rpm and tpm are never balances), an
// empty or overlong id, a negative period or count.
func TestBalanceRecords(t *testing.T) {
	priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	s, _ := NewSigner(priv)
	v, _ := NewVerifier(s.Public())
	good := Balance{Scope: LimitScopeKey, ID: "key_1", Kind: LimitQuotaTokens, Period: 20_000, Used: 42, AsOf: time.Unix(1_700_000_000, 0).UTC()}
	wire, err := s.Seal(&Record{Kind: KindBalance, Time: good.AsOf, Balances: []Balance{good}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := v.Open(wire)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckBalances(r); err != nil || len(r.Balances) != 1 || r.Balances[0] != good {
		t.Fatalf("opened %+v (%v)", r.Balances, err)
	}
	if !strings.Contains(string(wire), `"balances":[{"scope":"key","id":"key_1","kind":"quota_tokens","period":20000,"used":42,`) {
		t.Fatalf("wire %s", wire[64:])
	}
	// Another key's seal does not open.
	other, _ := GenerateKey()
	os, _ := NewSigner(other)
	forged, _ := os.Seal(&Record{Kind: KindBalance, Balances: []Balance{good}})
	if _, err := v.Open(forged); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("a forged balance opened: %v", err)
	}
	bad := func(mut func(*Balance)) *Record {
		b := good
		mut(&b)
		return &Record{Kind: KindBalance, Balances: []Balance{b}}
	}
	many := &Record{Kind: KindBalance}
	for range MaxBalancesPerRecord + 1 {
		many.Balances = append(many.Balances, good)
	}
	for name, r := range map[string]*Record{
		"another kind": {Kind: KindHeartbeat, Balances: []Balance{good}},
		"none":         {Kind: KindBalance},
		"too many":     many,
		"scope":        bad(func(b *Balance) { b.Scope = "tenant" }),
		"kind rpm":     bad(func(b *Balance) { b.Kind = LimitRPM }),
		"kind tpm":     bad(func(b *Balance) { b.Kind = LimitTPM }),
		"kind unknown": bad(func(b *Balance) { b.Kind = "credits" }),
		"empty id":     bad(func(b *Balance) { b.ID = "" }),
		"long id":      bad(func(b *Balance) { b.ID = strings.Repeat("k", MaxLimitIDBytes+1) }),
		"period < 0":   bad(func(b *Balance) { b.Period = -1 }),
		"used < 0":     bad(func(b *Balance) { b.Used = -1 }),
	} {
		if err := CheckBalances(r); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// The largest record the origin sends fits NATS's default max_payload
	// (1 MiB) with room to spare.
	big := &Record{Kind: KindBalance}
	for range MaxBalancesPerRecord {
		b := good
		b.ID = strings.Repeat("k", MaxLimitIDBytes)
		b.Used, b.Period = 1<<62, 1<<40
		big.Balances = append(big.Balances, b)
	}
	if w, err := s.Seal(big); err != nil || len(w) > 512<<10 {
		t.Fatalf("the largest balance record is %d bytes (%v)", len(w), err)
	}
}
