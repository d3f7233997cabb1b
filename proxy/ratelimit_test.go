package proxy

import (
	"testing"
	"time"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
)

func TestLimiterBurstThenRefill(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := newLimiter(func() time.Time { return now }, 1000)
	dep := &event.Deployment{ID: "d"}
	key := &cache.Key{ID: "k", RateLimit: &event.RateLimit{RequestsPerMinute: 60}}

	if r := l.check(dep, &cache.Key{ID: "free"}); r.applies || r.retry != 0 {
		t.Fatal("a key without a budget was limited")
	}
	for i := 0; i < 60; i++ {
		r := l.check(dep, key)
		if r.retry != 0 || r.limit != 60 || r.remaining != 59-i {
			t.Fatalf("request %d: %+v", i+1, r)
		}
	}
	r := l.check(dep, key)
	if r.retry != time.Second || r.remaining != 0 || r.reset != now.Add(time.Minute).Unix()+1 {
		t.Fatalf("61st request: %+v", r)
	}
	now = now.Add(time.Second) // one token back
	if r := l.check(dep, key); r.retry != 0 {
		t.Fatalf("after refill: %+v", r)
	}
	if r := l.check(dep, key); r.retry == 0 {
		t.Fatal("second request after one second's refill admitted")
	}
}

func TestLimiterKeyAndDeploymentBudgets(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := newLimiter(func() time.Time { return now }, 1000)
	dep := &event.Deployment{ID: "d", RateLimit: &event.RateLimit{RequestsPerMinute: 3}}
	a := &cache.Key{ID: "a", RateLimit: &event.RateLimit{RequestsPerMinute: 2}}
	b := &cache.Key{ID: "b"}

	if r := l.check(dep, a); r.retry != 0 || r.limit != 2 || r.remaining != 1 {
		t.Fatalf("tightest budget not reported: %+v", r)
	}
	l.check(dep, a)
	if r := l.check(dep, a); r.retry == 0 { // key spent; the deployment must not be charged
		t.Fatal("key over its budget admitted")
	}
	if r := l.check(dep, b); r.retry != 0 || r.remaining != 0 {
		t.Fatalf("deployment budget: %+v", r)
	}
	if r := l.check(dep, b); r.retry == 0 {
		t.Fatal("deployment over its budget admitted")
	}
}

func TestLimiterBounded(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := newLimiter(func() time.Time { return now }, 64*16)
	dep := &event.Deployment{ID: "d"}
	for i := 0; i < 64*16*4; i++ {
		l.check(dep, &cache.Key{ID: string(rune(i)) + "x", RateLimit: &event.RateLimit{RequestsPerMinute: 10}})
	}
	total := 0
	for i := range l.shards {
		total += len(l.shards[i].buckets)
	}
	if total > 64*16 || l.untracked.Load() == 0 {
		t.Fatalf("%d buckets kept, %d untracked", total, l.untracked.Load())
	}
	now = now.Add(2 * time.Minute) // all refilled: the next one sweeps its shard
	before := l.untracked.Load()
	l.check(dep, &cache.Key{ID: "late", RateLimit: &event.RateLimit{RequestsPerMinute: 10}})
	if l.untracked.Load() != before {
		t.Fatal("idle buckets were not swept to make room")
	}
}
