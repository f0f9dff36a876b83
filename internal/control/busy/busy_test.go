package busy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

func TestTryLock(t *testing.T) {
	var tb Table
	unlock, err := tb.TryLock("web", "a deploy")
	if err != nil {
		t.Fatal(err)
	}
	_, err = tb.TryLock("web", "a scale")
	if pier.KindOf(err) != pier.Conflict || !strings.Contains(err.Error(), "a deploy of web is in progress") {
		t.Errorf("second lock of web: %v; want Conflict naming the deploy", err)
	}
	other, err := tb.TryLock("api", "a scale")
	if err != nil {
		t.Fatalf("another name: %v", err)
	}
	other()
	unlock()
	unlock() // twice is harmless
	again, err := tb.TryLock("web", "a scale")
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	again()
}

func TestLockWaits(t *testing.T) {
	var tb Table
	unlock, _ := tb.TryLock("web", "a health check")
	got := make(chan error, 1)
	go func() {
		u, err := tb.Lock(context.Background(), "web", "a deploy")
		if err == nil {
			u()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("Lock did not wait for the holder: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Lock still waiting after unlock")
	}
	// A caller that stops waiting gets Conflict naming the holder.
	unlock, _ = tb.TryLock("web", "a backup")
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := tb.Lock(ctx, "web", "a deploy"); pier.KindOf(err) != pier.Conflict || !strings.Contains(err.Error(), "a backup of web") {
		t.Errorf("Lock past its deadline: %v", err)
	}
}

func TestElsewhere(t *testing.T) {
	var tb Table
	if tb.Elsewhere("web", "a deploy") {
		t.Error("empty table: a deploy elsewhere")
	}
	unlock, _ := tb.TryLock("web", "a deploy")
	tests := []struct {
		name, op string
		want     bool
	}{
		{"web", "a deploy", false}, // its own
		{"api", "a deploy", true},
		{"api", "a scale", false},
	}
	for _, tc := range tests {
		if got := tb.Elsewhere(tc.name, tc.op); got != tc.want {
			t.Errorf("Elsewhere(%q, %q) = %v, want %v", tc.name, tc.op, got, tc.want)
		}
	}
	unlock()
	if tb.Elsewhere("api", "a deploy") {
		t.Error("after unlock: a deploy elsewhere")
	}
}
