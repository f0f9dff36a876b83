package build

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestNeeds(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  []string // "type: reason"
	}{
		{"go with all three", map[string]string{"go.mod": "module x\n\nrequire (\n\tgithub.com/jackc/pgx/v5 v5.12.0\n\tgithub.com/redis/go-redis/v9 v9.23.0\n\tgithub.com/aws/aws-sdk-go-v2/service/s3 v1.0.0\n)\n"},
			[]string{"bucket: github.com/aws/aws-sdk-go-v2/service/s3 in go.mod", "postgres: github.com/jackc/pgx/v5 in go.mod", "redis: github.com/redis/go-redis/v9 in go.mod"}},
		{"go single-line require", map[string]string{"go.mod": "module x\nrequire github.com/lib/pq v1.10.0\n"}, []string{"postgres: github.com/lib/pq in go.mod"}},
		{"go indirect pgx-like name is not pgx", map[string]string{"go.mod": "module x\nrequire github.com/jackc/pgxpool-extra v1.0.0\n"}, nil},
		{"node", map[string]string{"package.json": `{"dependencies": {"express": "^4", "pg": "^8", "ioredis": "^5"}, "devDependencies": {"@aws-sdk/client-s3": "^3"}}`},
			[]string{"bucket: @aws-sdk/client-s3 in package.json", "postgres: pg in package.json", "redis: ioredis in package.json"}},
		{"node pg-like name is not pg", map[string]string{"package.json": `{"dependencies": {"pgp": "1"}}`}, nil},
		{"python requirements", map[string]string{"requirements.txt": "Flask==3.0\npsycopg2-binary>=2.9\nredis\n# boto3 later\n"},
			[]string{"postgres: psycopg2-binary in requirements.txt", "redis: redis in requirements.txt"}},
		{"pyproject", map[string]string{"pyproject.toml": "[project]\ndependencies = [\"asyncpg>=0.29\", \"boto3\"]\n"},
			[]string{"bucket: boto3 in pyproject.toml", "postgres: asyncpg in pyproject.toml"}},
		{"nothing", map[string]string{"index.html": "<h1>hi</h1>"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, body := range tc.files {
				os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644)
			}
			var got []string
			for _, n := range Needs(dir) {
				got = append(got, n.Type+": "+n.Reason)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Needs = %q, want %q", got, tc.want)
			}
		})
	}
}
