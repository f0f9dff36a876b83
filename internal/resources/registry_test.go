package resources

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/pier-dev/pier/internal/pier"
)

// typeOnly is a Driver with only a TypeInfo, for registry tests.
type typeOnly struct {
	Driver
	info TypeInfo
}

func (t typeOnly) Info() TypeInfo { return t.info }

func testRegistry(t *testing.T) *Registry {
	t.Helper()
	r, err := NewRegistry(typeOnly{info: TypeInfo{Name: "kv", Access: []Access{ReadWrite, Read}, Provides: []string{"host", "url"},
		Schema: json.RawMessage(`{"type":"object","additionalProperties":false,"properties":{
			"size_mb":{"type":"integer","minimum":8,"maximum":1024,"default":64},
			"mode":{"type":"string","enum":["fast","safe"],"default":"safe"},
			"ha":{"type":"boolean","default":false},
			"admin_url":{"type":"string","format":"uri"}}}`)}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestParams(t *testing.T) {
	r := testRegistry(t)
	for _, tc := range []struct {
		name string
		in   map[string]any
		want map[string]any // checked keys
		err  []string       // substrings of the error
	}{
		{"defaults", map[string]any{}, map[string]any{"size_mb": 64.0, "mode": "safe", "ha": false}, nil},
		{"strings from the CLI", map[string]any{"size_mb": "128", "ha": "true"}, map[string]any{"size_mb": int64(128), "ha": true}, nil},
		{"JSON numbers", map[string]any{"size_mb": 256.0}, map[string]any{"size_mb": 256.0}, nil},
		{"below minimum", map[string]any{"size_mb": "4"}, nil, []string{"parameter size_mb:", "8"}},
		{"not a number", map[string]any{"size_mb": "lots"}, nil, []string{"parameter size_mb:", "not a whole number"}},
		{"not in enum", map[string]any{"mode": "turbo"}, nil, []string{"parameter mode:"}},
		{"unknown parameter", map[string]any{"colour": "red"}, nil, []string{"parameter colour: unknown parameter"}},
		{"bad uri", map[string]any{"admin_url": "not a url"}, nil, []string{"parameter admin_url:"}},
		{"two problems", map[string]any{"size_mb": 2000.0, "mode": "x"}, nil, []string{"parameter size_mb:", "parameter mode:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.Params("kv", tc.in)
			if tc.err != nil {
				if err == nil {
					t.Fatalf("no error; got %v", got)
				}
				if pier.KindOf(err) != pier.Invalid {
					t.Errorf("kind %v, want Invalid", pier.KindOf(err))
				}
				for _, s := range tc.err {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s = %#v, want %#v", k, got[k], v)
				}
			}
		})
	}
}

func TestUnknownTypeAndAccess(t *testing.T) {
	r := testRegistry(t)
	if _, err := r.Params("mysql", nil); err == nil || !strings.Contains(err.Error(), `unknown resource type "mysql"`) || !strings.Contains(err.Error(), "kv") {
		t.Errorf("unknown type: %v", err)
	}
	if a, err := r.AccessOf("kv", ""); err != nil || a != ReadWrite {
		t.Errorf("default access = %v, %v", a, err)
	}
	if _, err := r.AccessOf("kv", Admin); err == nil || !strings.Contains(err.Error(), "readwrite, read") {
		t.Errorf("admin on kv: %v", err)
	}
}

func TestBadSchemaRefused(t *testing.T) {
	_, err := NewRegistry(typeOnly{info: TypeInfo{Name: "x", Access: []Access{Read}, Schema: json.RawMessage(`{"type": 12}`)}})
	if err == nil {
		t.Fatal("a schema with a bad type compiled")
	}
}

func TestEnv(t *testing.T) {
	pg := TypeInfo{Name: "postgres", Provides: []string{"host", "port", "user", "password", "database", "url"}, Conventional: map[string]string{"DATABASE_URL": "url"}}
	bucket := TypeInfo{Name: "bucket", Provides: []string{"bucket", "access_key_id"}, Conventional: map[string]string{"BUCKET_NAME": "bucket", "AWS_ACCESS_KEY_ID": "access_key_id"}}
	db := Credentials{"host": "h", "port": "5432", "user": "u", "password": "p", "database": "d", "url": "postgres://u:p@h:5432/d"}
	one := Env([]Bound{{As: "db", Type: pg, Creds: db}, {As: "my-files", Type: bucket, Creds: Credentials{"bucket": "b", "access_key_id": "k"}}})
	want := []string{"AWS_ACCESS_KEY_ID=k", "BUCKET_NAME=b", "DATABASE_URL=postgres://u:p@h:5432/d", "DB_DATABASE=d", "DB_HOST=h", "DB_PASSWORD=p",
		"DB_PORT=5432", "DB_URL=postgres://u:p@h:5432/d", "DB_USER=u", "MY_FILES_ACCESS_KEY_ID=k", "MY_FILES_BUCKET=b"}
	if strings.Join(one, " ") != strings.Join(want, " ") {
		t.Errorf("env:\n got %v\nwant %v", one, want)
	}
	// Two postgres connections: neither gets DATABASE_URL.
	two := Env([]Bound{{As: "db", Type: pg, Creds: db}, {As: "replica", Type: pg, Creds: db}})
	for _, kv := range two {
		if strings.HasPrefix(kv, "DATABASE_URL=") {
			t.Errorf("DATABASE_URL given with two postgres connections: %v", two)
		}
	}
	if len(two) != 12 {
		t.Errorf("two connections: %d vars, want 12: %v", len(two), two)
	}
	if err := ValidateAs("9lives"); err == nil {
		t.Error("--as 9lives accepted")
	}
	if err := ValidateAs("pier"); err == nil {
		t.Error("--as pier accepted: PIER_ variables are pier's own")
	}
	if err := ValidateAs("primary-db"); err != nil {
		t.Error(err)
	}
}
