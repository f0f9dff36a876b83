// Package controltest holds what the control services' tests share: a
// journal in which their fakes record, in order, what they were asked to
// do, checks of it, and a real store to run the fakes' rules against.
package controltest

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/pier-dev/pier/internal/store"
)

// Journal is the record of fakes' calls: "reroll web: connect db",
// "revoke db web". It is safe for concurrent use.
type Journal struct {
	mu      sync.Mutex
	entries []string
}

// Add records one entry.
func (j *Journal) Add(format string, args ...any) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.entries = append(j.entries, fmt.Sprintf(format, args...))
}

// All are the entries so far, oldest first.
func (j *Journal) All() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.entries)
}

// Has says whether entry was recorded.
func (j *Journal) Has(entry string) bool { return slices.Contains(j.All(), entry) }

// Count is how many times entry was recorded.
func (j *Journal) Count(entry string) int {
	n := 0
	for _, e := range j.All() {
		if e == entry {
			n++
		}
	}
	return n
}

// Want reports on t each entry of want missing from got, and each of
// wantNot found in it.
func Want(t testing.TB, got, want, wantNot []string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("did %q, want %q among them", got, w)
		}
	}
	for _, w := range wantNot {
		if slices.Contains(got, w) {
			t.Errorf("did %q, want no %q", got, w)
		}
	}
}

// Store opens a real store in a temporary directory, closed when the test
// ends.
func Store(t testing.TB) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}
