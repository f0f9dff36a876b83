package bucket

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/pier-dev/pier/internal/resources"
)

// The gateway is one per process (embedgw), so the tests here never run in
// parallel: each starts a Driver and closes it in a Cleanup.

const (
	rootAccess = "ROOTACCESSKEY0000000"
	rootSecret = "rootsecretrootsecretrootsecretrootsecre"
)

// fileStore is an AccountStore in a JSON file, standing in for pier's
// encrypted store.
type fileStore struct {
	mu    sync.Mutex
	path  string
	saves int
}

func (f *fileStore) Load(context.Context) (map[string]Account, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := os.ReadFile(f.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var m map[string]Account
	return m, json.Unmarshal(b, &m)
}

func (f *fileStore) Save(_ context.Context, m map[string]Account) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	f.saves++
	return os.WriteFile(f.path, b, 0o600)
}

func (f *fileStore) accounts(t *testing.T) map[string]Account {
	t.Helper()
	m, err := f.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// testLogger logs into the test's output; benchmarks log nothing.
func testLogger(t testing.TB) *slog.Logger {
	if _, ok := t.(*testing.B); ok {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// newDriver starts a Driver on dir with the given store and closes it when
// the test ends.
func newDriver(t testing.TB, dir string, store AccountStore) *Driver {
	t.Helper()
	d, err := New(Config{
		Dir:        dir,
		Listen:     []string{"127.0.0.1"},
		RootAccess: rootAccess,
		RootSecret: rootSecret,
		Accounts:   store,
		Log:        testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	return d
}

// client is an S3 client as an app would configure it from credentials.
func client(c resources.Credentials) *s3.Client {
	return s3.New(s3.Options{
		Region:       c["region"],
		BaseEndpoint: aws.String(c["endpoint"]),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(c["access_key_id"], c["secret_access_key"], ""),
	})
}

func instance(name string, params map[string]any) resources.Instance {
	return resources.Instance{Name: name, Params: params}
}

func provision(t *testing.T, d *Driver, inst resources.Instance) {
	t.Helper()
	if _, err := d.Provision(context.Background(), inst); err != nil {
		t.Fatalf("provision %s: %v", inst.Name, err)
	}
}

func grant(t *testing.T, d *Driver, inst resources.Instance, app string, access resources.Access) resources.Credentials {
	t.Helper()
	c, err := d.Grant(context.Background(), inst, resources.Grant{App: app, Access: access})
	if err != nil {
		t.Fatalf("grant %s %s on %s: %v", app, access, inst.Name, err)
	}
	return c
}

func put(ctx context.Context, c *s3.Client, bucket, key, body string) error {
	_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: strings.NewReader(body)})
	return err
}

func get(ctx context.Context, c *s3.Client, bucket, key string) (string, error) {
	out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		return "", err
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	return string(b), err
}

func list(ctx context.Context, c *s3.Client, bucket string) ([]string, error) {
	out, err := c.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, o := range out.Contents {
		keys = append(keys, aws.ToString(o.Key))
	}
	return keys, nil
}

func del(ctx context.Context, c *s3.Client, bucket, key string) error {
	_, err := c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	return err
}

// denied fails the test unless err is an S3 refusal.
func denied(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: succeeded, want AccessDenied", what)
		return
	}
	if !isCode(err, "AccessDenied") && !isCode(err, "InvalidAccessKeyId") {
		t.Errorf("%s: %v, want AccessDenied or InvalidAccessKeyId", what, err)
	}
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func TestBucket(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := &fileStore{path: filepath.Join(dir, "accounts.json")}
	gwDir := filepath.Join(dir, "gw")
	d := newDriver(t, gwDir, store)
	outer := t // owns the drivers: a subtest's Cleanup would close them early

	photos := instance("photos", map[string]any{"versioning": false})
	logs := instance("lg", nil) // too short for S3: becomes pier-lg
	provision(t, d, photos)
	provision(t, d, photos) // idempotent
	provision(t, d, logs)

	web := grant(t, d, photos, "web", resources.ReadWrite)
	worker := grant(t, d, photos, "worker", resources.Read)
	webLogs := grant(t, d, logs, "web", resources.ReadWrite)
	rw, ro := client(web), client(worker)

	t.Run("credentials", func(t *testing.T) {
		want := []string{"access_key_id", "bucket", "endpoint", "host", "password", "port", "region", "secret_access_key", "url", "user"}
		got := slices.Sorted(func(yield func(string) bool) {
			for k := range web {
				if !yield(k) {
					return
				}
			}
		})
		if !slices.Equal(got, want) {
			t.Errorf("fields %v, want %v", got, want)
		}
		if web["bucket"] != "photos" || webLogs["bucket"] != "pier-lg" {
			t.Errorf("buckets %q %q", web["bucket"], webLogs["bucket"])
		}
		if web["url"] != d.Endpoint()+"/photos" || web["endpoint"] != "http://127.0.0.1:"+strconv.Itoa(d.Port()) {
			t.Errorf("url %q endpoint %q", web["url"], web["endpoint"])
		}
		if len(web["access_key_id"]) != 20 || len(web["secret_access_key"]) != 40 || web["user"] != web["access_key_id"] || web["password"] != web["secret_access_key"] {
			t.Errorf("keys %q/%q", web["access_key_id"], web["secret_access_key"])
		}
		for _, c := range []resources.Credentials{web, worker, webLogs} {
			for k, v := range c {
				if v == rootAccess || v == rootSecret {
					t.Errorf("%s is the root key", k)
				}
			}
		}
		for _, a := range store.accounts(t) {
			if a.Role != "user" {
				t.Errorf("account %s has role %q", a.AccessKeyID, a.Role)
			}
		}
	})

	t.Run("readwrite", func(t *testing.T) {
		must(t, "put", put(ctx, rw, "photos", "a/cat.jpg", "meow"))
		got, err := get(ctx, rw, "photos", "a/cat.jpg")
		if err != nil || got != "meow" {
			t.Fatalf("get: %q, %v", got, err)
		}
		_, err = rw.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String("photos"), Key: aws.String("a/cat.jpg")})
		must(t, "head object", err)
		_, err = rw.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String("photos")})
		must(t, "head bucket", err)
		must(t, "put", put(ctx, rw, "photos", "tmp", "x"))
		keys, err := list(ctx, rw, "photos")
		if err != nil || !slices.Equal(keys, []string{"a/cat.jpg", "tmp"}) {
			t.Fatalf("list: %v, %v", keys, err)
		}
		must(t, "delete", del(ctx, rw, "photos", "tmp"))
		if _, err := get(ctx, rw, "photos", "tmp"); !isCode(err, "NoSuchKey") {
			t.Errorf("get deleted: %v", err)
		}
	})

	t.Run("multipart", func(t *testing.T) {
		multipart(ctx, t, rw, "photos", "big.bin")
	})

	t.Run("other bucket denied", func(t *testing.T) {
		denied(t, "put in pier-lg", put(ctx, rw, "pier-lg", "x", "x"))
		_, err := list(ctx, rw, "pier-lg")
		denied(t, "list pier-lg", err)
		must(t, "put with pier-lg's own keys", put(ctx, client(webLogs), "pier-lg", "x", "x"))
		_, err = get(ctx, client(webLogs), "photos", "a/cat.jpg")
		denied(t, "get photos with pier-lg's keys", err)
		_, err = rw.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("mine")})
		denied(t, "create bucket", err)
		_, err = rw.PutBucketPolicy(ctx, &s3.PutBucketPolicyInput{Bucket: aws.String("photos"), Policy: aws.String(`{"Statement":[]}`)})
		denied(t, "put bucket policy", err)
		_, err = rw.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String("photos")})
		denied(t, "delete bucket", err)
	})

	t.Run("read", func(t *testing.T) {
		got, err := get(ctx, ro, "photos", "a/cat.jpg")
		if err != nil || got != "meow" {
			t.Fatalf("get: %q, %v", got, err)
		}
		if _, err := list(ctx, ro, "photos"); err != nil {
			t.Fatalf("list: %v", err)
		}
		denied(t, "put", put(ctx, ro, "photos", "dog.jpg", "woof"))
		denied(t, "delete", del(ctx, ro, "photos", "a/cat.jpg"))
		_, err = ro.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String("photos"), Key: aws.String("m")})
		denied(t, "multipart", err)
	})

	t.Run("listens only on Listen", func(t *testing.T) {
		port := strconv.Itoa(d.Port())
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second)
		must(t, "dial 127.0.0.1", err)
		c.Close()
		if c, err := net.DialTimeout("tcp", "127.0.0.2:"+port, time.Second); err == nil {
			c.Close()
			t.Error("gateway answers on 127.0.0.2")
		}
		if _, err := os.Stat(filepath.Join(gwDir, adminSocket)); err != nil {
			t.Errorf("admin socket: %v", err)
		}
	})

	t.Run("sdk from env", func(t *testing.T) {
		sdkFromEnv(ctx, t, web)
	})

	t.Run("revoke", func(t *testing.T) {
		g := resources.Grant{App: "worker", Access: resources.Read}
		must(t, "revoke", d.Revoke(ctx, photos, g, worker))
		must(t, "revoke again", d.Revoke(ctx, photos, g, worker))
		_, err := get(ctx, ro, "photos", "a/cat.jpg")
		denied(t, "get with revoked keys", err)
		if _, err := get(ctx, rw, "photos", "a/cat.jpg"); err != nil {
			t.Errorf("other grant broken by revoke: %v", err)
		}
		if _, ok := store.accounts(t)[worker["access_key_id"]]; ok {
			t.Error("revoked account still stored")
		}
		if sids := policySids(ctx, t, d, "photos"); !slices.Equal(sids, []string{"pier-app-web"}) {
			t.Errorf("policy statements %v", sids)
		}
	})

	t.Run("regrant replaces", func(t *testing.T) {
		c1 := grant(t, d, photos, "batch", resources.ReadWrite)
		c2 := grant(t, d, photos, "batch", resources.Read)
		_, err := get(ctx, client(c1), "photos", "a/cat.jpg")
		denied(t, "first grant's keys", err)
		if _, err := get(ctx, client(c2), "photos", "a/cat.jpg"); err != nil {
			t.Errorf("second grant: %v", err)
		}
		denied(t, "second grant is read", put(ctx, client(c2), "photos", "y", "y"))
		must(t, "revoke", d.Revoke(ctx, photos, resources.Grant{App: "batch", Access: resources.Read}, c2))
		if sids := policySids(ctx, t, d, "photos"); !slices.Equal(sids, []string{"pier-app-web"}) {
			t.Errorf("policy statements %v", sids)
		}
	})

	t.Run("bucket_name collision", func(t *testing.T) {
		_, err := d.Provision(ctx, instance("other", map[string]any{"bucket_name": "photos"}))
		if err == nil || !strings.Contains(err.Error(), "belongs to resource photos") {
			t.Errorf("provision over photos: %v", err)
		}
	})

	t.Run("restart", func(t *testing.T) {
		must(t, "close", d.Close())
		if err := d.Start(ctx, photos); !errors.Is(err, ErrClosed) {
			t.Errorf("start after close: %v", err)
		}
		if _, err := get(ctx, rw, "photos", "a/cat.jpg"); err == nil {
			t.Error("gateway still answers after Close")
		}
		d = newDriver(outer, gwDir, store)
		must(t, "start", d.Start(ctx, photos))
		if web["endpoint"] != d.Endpoint() {
			t.Errorf("endpoint moved: %s -> %s", web["endpoint"], d.Endpoint())
		}
		rw = client(web)
		got, err := get(ctx, rw, "photos", "a/cat.jpg")
		if err != nil || got != "meow" {
			t.Fatalf("get after restart: %q, %v", got, err)
		}
		must(t, "put after restart", put(ctx, rw, "photos", "after", "restart"))
		denied(t, "other bucket after restart", put(ctx, rw, "pier-lg", "x", "x"))
		_, err = get(ctx, ro, "photos", "a/cat.jpg")
		denied(t, "revoked keys after restart", err)
		if _, err := get(ctx, client(webLogs), "pier-lg", "x"); err != nil {
			t.Errorf("pier-lg's keys after restart: %v", err)
		}
	})

	t.Run("versioning", func(t *testing.T) {
		docs := instance("docs", map[string]any{"versioning": true})
		provision(t, d, docs)
		c := client(grant(t, d, docs, "web", resources.ReadWrite))
		for _, v := range []string{"v1", "v2"} {
			must(t, "put", put(ctx, c, "docs", "f", v))
		}
		must(t, "delete", del(ctx, c, "docs", "f"))
		out, err := d.admin.ListObjectVersions(ctx, &s3.ListObjectVersionsInput{Bucket: aws.String("docs")})
		must(t, "list versions", err)
		if len(out.Versions) != 2 || len(out.DeleteMarkers) != 1 {
			t.Errorf("%d versions, %d delete markers; want 2, 1", len(out.Versions), len(out.DeleteMarkers))
		}
		must(t, "destroy", d.Destroy(ctx, docs))
		bucketGone(ctx, t, d, "docs")
	})

	t.Run("destroy", func(t *testing.T) {
		// A pending upload and nested keys must not keep the bucket alive.
		_, err := rw.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String("photos"), Key: aws.String("pending")})
		must(t, "create upload", err)
		must(t, "destroy", d.Destroy(ctx, photos))
		must(t, "destroy again", d.Destroy(ctx, photos))
		bucketGone(ctx, t, d, "photos")
		_, err = list(ctx, rw, "photos")
		denied(t, "old keys after destroy", err)
		for _, a := range store.accounts(t) {
			if a.Bucket == "photos" {
				t.Errorf("account %s of destroyed bucket kept", a.AccessKeyID)
			}
		}
		if _, err := get(ctx, client(webLogs), "pier-lg", "x"); err != nil {
			t.Errorf("pier-lg broken by destroying photos: %v", err)
		}
		if _, err := os.Stat(filepath.Join(gwDir, dataDir, "photos")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("photos directory left behind: %v", err)
		}
	})
}

// multipart uploads two parts (the first at S3's 5 MiB minimum) and reads
// the object back.
func multipart(ctx context.Context, t *testing.T, c *s3.Client, bucket, key string) {
	t.Helper()
	parts := [][]byte{bytes.Repeat([]byte("a"), 5<<20), []byte("tail")}
	up, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	must(t, "create upload", err)
	var done []types.CompletedPart
	for i, p := range parts {
		n := int32(i + 1)
		out, err := c.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String(bucket), Key: aws.String(key),
			UploadId: up.UploadId, PartNumber: aws.Int32(n), Body: bytes.NewReader(p)})
		must(t, "upload part", err)
		done = append(done, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(n),
			ChecksumCRC32: out.ChecksumCRC32})
	}
	lp, err := c.ListParts(ctx, &s3.ListPartsInput{Bucket: aws.String(bucket), Key: aws.String(key), UploadId: up.UploadId})
	must(t, "list parts", err)
	if len(lp.Parts) != 2 {
		t.Errorf("%d parts listed", len(lp.Parts))
	}
	_, err = c.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: aws.String(bucket), Key: aws.String(key),
		UploadId: up.UploadId, MultipartUpload: &types.CompletedMultipartUpload{Parts: done}})
	must(t, "complete upload", err)
	got, err := get(ctx, c, bucket, key)
	must(t, "get", err)
	if want := string(bytes.Join(parts, nil)); got != want {
		t.Errorf("object is %d bytes, want %d", len(got), len(want))
	}
	ab, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String(bucket), Key: aws.String("aborted")})
	must(t, "create upload", err)
	_, err = c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: aws.String(bucket), Key: aws.String("aborted"), UploadId: ab.UploadId})
	must(t, "abort upload", err)
}

// sdkFromEnv checks that an app configured only through the conventional
// env vars pier injects can use its bucket.
func sdkFromEnv(ctx context.Context, t *testing.T, c resources.Credentials) {
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_ENDPOINT_URL", "")
	t.Setenv("AWS_ACCESS_KEY_ID", c["access_key_id"])
	t.Setenv("AWS_SECRET_ACCESS_KEY", c["secret_access_key"])
	t.Setenv("AWS_ENDPOINT_URL_S3", c["endpoint"])
	t.Setenv("AWS_REGION", c["region"])
	cfg, err := config.LoadDefaultConfig(ctx)
	must(t, "load config", err)
	app := s3.NewFromConfig(cfg) // no UsePathStyle: an IP endpoint gets path style anyway
	must(t, "put", put(ctx, app, c["bucket"], "env", "ok"))
	if got, err := get(ctx, app, c["bucket"], "env"); err != nil || got != "ok" {
		t.Errorf("get: %q, %v", got, err)
	}
	must(t, "delete", del(ctx, app, c["bucket"], "env"))
}

func policySids(ctx context.Context, t *testing.T, d *Driver, bucket string) []string {
	t.Helper()
	out, err := d.admin.GetBucketPolicy(ctx, &s3.GetBucketPolicyInput{Bucket: aws.String(bucket)})
	must(t, "get policy", err)
	p, err := parsePolicy(aws.ToString(out.Policy))
	must(t, "parse policy", err)
	var sids []string
	for _, raw := range p.Statement {
		var s statement
		must(t, "parse statement", json.Unmarshal(raw, &s))
		sids = append(sids, s.Sid)
	}
	return sids
}

func bucketGone(ctx context.Context, t *testing.T, d *Driver, bucket string) {
	t.Helper()
	_, err := d.admin.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(bucket)})
	if err == nil {
		t.Errorf("bucket %s still exists", bucket)
	}
}

func TestSchema(t *testing.T) {
	info := (&Driver{}).Info()
	var doc any
	must(t, "parse schema", json.Unmarshal(info.Schema, &doc))
	c := jsonschema.NewCompiler()
	must(t, "add schema", c.AddResource("bucket.json", doc))
	sch, err := c.Compile("bucket.json")
	must(t, "compile schema", err)
	for _, tc := range []struct {
		params string
		ok     bool
	}{
		{`{}`, true},
		{`{"bucket_name": "my-bucket.v2", "versioning": true}`, true},
		{`{"bucket_name": "ab"}`, false},
		{`{"bucket_name": "My_Bucket"}`, false},
		{`{"bucket_name": "-bucket"}`, false},
		{`{"admin_url": "http://x"}`, false},
		{`{"versioning": "yes"}`, false},
	} {
		var v any
		must(t, "parse params", json.Unmarshal([]byte(tc.params), &v))
		if err := sch.Validate(v); (err == nil) != tc.ok {
			t.Errorf("%s: valid=%v, want %v (%v)", tc.params, err == nil, tc.ok, err)
		}
	}
}

func TestBucketName(t *testing.T) {
	for _, tc := range []struct {
		name   string
		params map[string]any
		want   string
	}{
		{"photos", nil, "photos"},
		{"db", nil, "pier-db"},
		{"x", nil, "pier-x"},
		{"photos", map[string]any{"bucket_name": "team.photos"}, "team.photos"},
		{"trailing-", nil, ""},
		{"a", map[string]any{"bucket_name": "a..b"}, ""},
	} {
		got, err := bucketName(instance(tc.name, tc.params))
		if got != tc.want || (err != nil) != (tc.want == "") {
			t.Errorf("bucketName(%s, %v) = %q, %v; want %q", tc.name, tc.params, got, err, tc.want)
		}
	}
}

func TestConfig(t *testing.T) {
	store := &fileStore{path: filepath.Join(t.TempDir(), "a.json")}
	for _, cfg := range []Config{
		{Listen: []string{"127.0.0.1"}, RootAccess: "a", RootSecret: "b", Accounts: store},
		{Dir: t.TempDir(), RootAccess: "a", RootSecret: "b", Accounts: store},
		{Dir: t.TempDir(), Listen: []string{"127.0.0.1"}, RootAccess: "a", Accounts: store},
		{Dir: t.TempDir(), Listen: []string{"127.0.0.1"}, RootAccess: "a", RootSecret: "b"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	// The chosen port is kept across restarts.
	dir := t.TempDir()
	cfg := Config{Dir: dir, Listen: []string{"127.0.0.1"}, RootAccess: "a", RootSecret: "b", Accounts: store}
	d1, err := New(cfg)
	must(t, "new", err)
	d2, err := New(cfg)
	must(t, "new", err)
	if d1.Port() != d2.Port() || d1.Port() == 0 {
		t.Errorf("ports %d, %d", d1.Port(), d2.Port())
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode: %v, %v", fi.Mode(), err)
	}
}

// BenchmarkPutGet measures a 4 KiB PUT then GET through the gateway with
// an app's credentials.
func BenchmarkPutGet(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	d := newDriver(b, filepath.Join(dir, "gw"), &fileStore{path: filepath.Join(dir, "accounts.json")})
	inst := instance("bench", nil)
	if _, err := d.Provision(ctx, inst); err != nil {
		b.Fatal(err)
	}
	creds, err := d.Grant(ctx, inst, resources.Grant{App: "web", Access: resources.ReadWrite})
	if err != nil {
		b.Fatal(err)
	}
	c := client(creds)
	body := strings.Repeat("x", 4096)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if err := put(ctx, c, "bench", "obj", body); err != nil {
			b.Fatal(err)
		}
		if _, err := get(ctx, c, "bench", "obj"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProvisionGrant measures provisioning a bucket and granting one
// app on it.
func BenchmarkProvisionGrant(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	d := newDriver(b, filepath.Join(dir, "gw"), &fileStore{path: filepath.Join(dir, "accounts.json")})
	i := 0
	for b.Loop() {
		inst := instance("b"+strconv.Itoa(i), nil)
		i++
		if _, err := d.Provision(ctx, inst); err != nil {
			b.Fatal(err)
		}
		if _, err := d.Grant(ctx, inst, resources.Grant{App: "web", Access: resources.ReadWrite}); err != nil {
			b.Fatal(err)
		}
	}
}
