package build

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Need is a resource an app's code evidently uses.
type Need struct {
	Type   string // postgres, redis or bucket
	Reason string // what gave it away, e.g. "github.com/jackc/pgx/v5 in go.mod"
}

// clue is a dependency that reveals a need, per manifest.
type clue struct {
	file string
	dep  *regexp.Regexp
	typ  string
}

// clues are matched against dependency names in go.mod, package.json,
// requirements.txt and pyproject.toml.
var clues = []clue{
	{"go.mod", regexp.MustCompile(`(?m)^\s*(?:require\s+)?(github\.com/jackc/pgx(?:/v\d+)?|github\.com/lib/pq|gorm\.io/driver/postgres)\s`), "postgres"},
	{"go.mod", regexp.MustCompile(`(?m)^\s*(?:require\s+)?(github\.com/redis/go-redis(?:/v\d+)?|github\.com/go-redis/redis(?:/v\d+)?|github\.com/gomodule/redigo)\s`), "redis"},
	{"go.mod", regexp.MustCompile(`(?m)^\s*(?:require\s+)?(github\.com/aws/aws-sdk-go-v2/service/s3|github\.com/aws/aws-sdk-go|github\.com/minio/minio-go(?:/v\d+)?)\s`), "bucket"},
	{"package.json", regexp.MustCompile(`"(pg|postgres|pg-promise|@neondatabase/serverless)"\s*:`), "postgres"},
	{"package.json", regexp.MustCompile(`"(redis|ioredis)"\s*:`), "redis"},
	{"package.json", regexp.MustCompile(`"(@aws-sdk/client-s3|aws-sdk|minio)"\s*:`), "bucket"},
	{"requirements.txt", regexp.MustCompile(`(?mi)^\s*(psycopg2?(?:-binary)?|psycopg\[?[a-z,]*\]?|asyncpg|pg8000)\b`), "postgres"},
	{"requirements.txt", regexp.MustCompile(`(?mi)^\s*(redis|hiredis)\b`), "redis"},
	{"requirements.txt", regexp.MustCompile(`(?mi)^\s*(boto3|minio|aioboto3)\b`), "bucket"},
	{"pyproject.toml", regexp.MustCompile(`(?mi)["']\s*(psycopg2?(?:-binary)?|psycopg|asyncpg)\b`), "postgres"},
	{"pyproject.toml", regexp.MustCompile(`(?mi)["']\s*(redis)\b`), "redis"},
	{"pyproject.toml", regexp.MustCompile(`(?mi)["']\s*(boto3|minio)\b`), "bucket"},
}

// Needs reads the app's dependency manifests and returns the resources its
// code evidently uses (a Postgres driver, a Redis client, an S3 SDK), one
// per type, sorted by type.
func Needs(dir string) []Need {
	found := map[string]Need{}
	for _, c := range clues {
		if _, ok := found[c.typ]; ok {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, c.file))
		if err != nil {
			continue
		}
		if m := c.dep.FindSubmatch(b); m != nil {
			found[c.typ] = Need{Type: c.typ, Reason: strings.TrimSpace(string(m[1])) + " in " + c.file}
		}
	}
	out := make([]Need, 0, len(found))
	for _, n := range found {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Type < out[j].Type })
	return out
}
