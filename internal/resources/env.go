package resources

import (
	"sort"
	"strings"

	"github.com/pier-dev/pier/internal/pier"
)

// Bound is one connection of an app with its credentials: what the app's
// environment is made from.
type Bound struct {
	As    string // the connection's name; DB for "db"
	Type  TypeInfo
	Creds Credentials
}

// EnvPrefix is the env var prefix of a connection named as: upper case,
// dashes as underscores ("my-db" -> "MY_DB").
func EnvPrefix(as string) string {
	return strings.ToUpper(strings.ReplaceAll(as, "-", "_"))
}

// ValidateAs checks a connection name given with --as.
func ValidateAs(as string) error {
	if p := EnvPrefix(as); p == "PIER" || strings.HasPrefix(p, "PIER_") {
		return pier.Errorf(pier.Invalid, "--as %q: names starting with pier are reserved for pier's own variables", as)
	}
	if err := pier.ValidateEnvName(EnvPrefix(as)); err != nil {
		return pier.Errorf(pier.Invalid, "--as %q: a connection name must make a valid env var prefix (letters, digits, - and _, not starting with a digit)", as)
	}
	return nil
}

// Env returns the variables a set of connections injects, sorted: for each
// connection PREFIX_FIELD for every field its type provides, and for the
// sole connection of a type the ecosystem's conventional names as well
// (DATABASE_URL, REDIS_URL, AWS_ACCESS_KEY_ID, ...).
func Env(bs []Bound) []string {
	perType := map[string]int{}
	for _, b := range bs {
		perType[b.Type.Name]++
	}
	vars := map[string]string{}
	for _, b := range bs {
		prefix := EnvPrefix(b.As)
		for _, f := range b.Type.Provides {
			if v, ok := b.Creds[f]; ok {
				vars[prefix+"_"+strings.ToUpper(f)] = v
			}
		}
	}
	// Conventional names never override a connection's own variables.
	for _, b := range bs {
		if perType[b.Type.Name] != 1 {
			continue
		}
		for name, f := range b.Type.Conventional {
			if _, taken := vars[name]; !taken {
				if v, ok := b.Creds[f]; ok {
					vars[name] = v
				}
			}
		}
	}
	out := make([]string, 0, len(vars))
	for k, v := range vars {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// EnvNames returns just the names of Env(bs).
func EnvNames(bs []Bound) []string {
	env := Env(bs)
	for i, kv := range env {
		env[i], _, _ = strings.Cut(kv, "=")
	}
	return env
}
