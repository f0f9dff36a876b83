package busy

import (
	"strings"
	"testing"

	"github.com/pier-dev/pier/internal/pier"
)

func TestLock(t *testing.T) {
	var tb Table
	unlock, err := tb.Lock("web", "a deploy")
	if err != nil {
		t.Fatal(err)
	}
	_, err = tb.Lock("web", "a scale")
	if pier.KindOf(err) != pier.Conflict || !strings.Contains(err.Error(), "a deploy of web is in progress") {
		t.Errorf("second lock of web: %v; want Conflict naming the deploy", err)
	}
	other, err := tb.Lock("api", "a scale")
	if err != nil {
		t.Fatalf("another name: %v", err)
	}
	other()
	unlock()
	again, err := tb.Lock("web", "a scale")
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	again()
}

func TestElsewhere(t *testing.T) {
	var tb Table
	if tb.Elsewhere("web", "a deploy") {
		t.Error("empty table: a deploy elsewhere")
	}
	unlock, _ := tb.Lock("web", "a deploy")
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
