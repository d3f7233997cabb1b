package event

import (
	"math"
	"testing"
)

func TestPricingCost(t *testing.T) {
	cached := int64(250_000_000) // 0.25 per million
	p := &Pricing{Currency: "USD", Prompt: 500_000_000, Completion: 1_500_000_000, Cached: &cached}
	noCache := &Pricing{Currency: "USD", Prompt: 500_000_000, Completion: 1_500_000_000}
	for _, c := range []struct {
		name                       string
		p                          *Pricing
		prompt, completion, cached int64
		want                       int64
	}{
		{"unpriced", nil, 1000, 1000, 0, 0},
		{"nothing", p, 0, 0, 0, 0},
		{"one million each", p, 1_000_000, 1_000_000, 0, 2_000_000_000},
		{"cached part of prompt at the cached price", p, 1_000_000, 0, 400_000, 600_000*500 + 400_000*250},
		{"cached without a cached price is a prompt token", noCache, 1_000_000, 0, 400_000, 500_000_000},
		{"cached above prompt counts as prompt", p, 10, 0, 99, 10 * 250},
		{"rounded up to a whole nano-unit", p, 1, 0, 0, 500},
		{"a fraction of a nano-unit is one", &Pricing{Prompt: 1}, 1, 0, 0, 1},
		{"negative counts are zero", p, -5, -5, -5, 0},
		{"saturates", &Pricing{Prompt: math.MaxInt64, Completion: math.MaxInt64}, math.MaxInt64, math.MaxInt64, 0, math.MaxInt64},
	} {
		if got := c.p.Cost(c.prompt, c.completion, c.cached); got != c.want {
			t.Errorf("%s: Cost(%d, %d, %d) = %d, want %d", c.name, c.prompt, c.completion, c.cached, got, c.want)
		}
	}
}

func TestFormatNanos(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 1: "0.000000001", 500_000_000: "0.5", 12 * NanosPerUnit: "12",
		1_234_567_890: "1.23456789", -1_500_000_000: "-1.5", math.MaxInt64: "9223372036.854775807", math.MinInt64: "-9223372036.854775808"} {
		if got := FormatNanos(n); got != want {
			t.Errorf("FormatNanos(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestEmptyCountsBudget(t *testing.T) {
	if (&TokenLimits{Budget: &Budget{}}).Empty() {
		t.Fatal("a zero budget is a bound (it allows no priced request), not an empty one")
	}
}
