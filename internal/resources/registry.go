package resources

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Registry holds the resource types pier knows, with their compiled
// parameter schemas.
type Registry struct {
	drivers map[string]Driver
	schemas map[string]*jsonschema.Schema
	props   map[string]map[string]property
}

// property is what the registry reads of a parameter's schema: its type
// (to turn CLI strings into values) and its default.
type property struct {
	Type    any `json:"type"`
	Default any `json:"default"`
}

// NewRegistry compiles the drivers' schemas; a bad schema is a programming
// error reported at start.
func NewRegistry(drivers ...Driver) (*Registry, error) {
	r := &Registry{drivers: map[string]Driver{}, schemas: map[string]*jsonschema.Schema{}, props: map[string]map[string]property{}}
	for _, d := range drivers {
		info := d.Info()
		if _, dup := r.drivers[info.Name]; dup {
			return nil, fmt.Errorf("resource type %s registered twice", info.Name)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(info.Schema))
		if err != nil {
			return nil, fmt.Errorf("schema of %s: %w", info.Name, err)
		}
		c := jsonschema.NewCompiler()
		c.AssertFormat()
		url := "pier:///types/" + info.Name + ".json"
		if err := c.AddResource(url, doc); err != nil {
			return nil, fmt.Errorf("schema of %s: %w", info.Name, err)
		}
		sch, err := c.Compile(url)
		if err != nil {
			return nil, fmt.Errorf("schema of %s: %w", info.Name, err)
		}
		var top struct {
			Properties map[string]property `json:"properties"`
		}
		if err := json.Unmarshal(info.Schema, &top); err != nil {
			return nil, fmt.Errorf("schema of %s: %w", info.Name, err)
		}
		r.drivers[info.Name], r.schemas[info.Name], r.props[info.Name] = d, sch, top.Properties
	}
	return r, nil
}

// Driver returns the driver of a type, or Invalid naming the known types.
func (r *Registry) Driver(typ string) (Driver, error) {
	d, ok := r.drivers[typ]
	if !ok {
		return nil, pier.Errorf(pier.Invalid, "unknown resource type %q; known types: %s (see `pier resources types`)", typ, strings.Join(r.names(), ", "))
	}
	return d, nil
}

func (r *Registry) names() []string {
	names := make([]string, 0, len(r.drivers))
	for n := range r.drivers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Types lists the registered types by name.
func (r *Registry) Types() []TypeInfo {
	out := make([]TypeInfo, 0, len(r.drivers))
	for _, n := range r.names() {
		out = append(out, r.drivers[n].Info())
	}
	return out
}

// Params validates parameters against typ's schema and returns them with
// defaults filled in. String values of parameters whose schema says
// integer, number or boolean are converted first, so `--param
// maxmemory_mb=128` works from a shell. Errors name the parameter.
func (r *Registry) Params(typ string, in map[string]any) (map[string]any, error) {
	if _, err := r.Driver(typ); err != nil {
		return nil, err
	}
	props := r.props[typ]
	out := make(map[string]any, len(in)+len(props))
	for k, v := range in {
		cv, err := coerce(k, v, props[k])
		if err != nil {
			return nil, err
		}
		out[k] = cv
	}
	// Round-trip through JSON so numbers are what the validator expects.
	b, err := json.Marshal(out)
	if err != nil {
		return nil, pier.Errorf(pier.Invalid, "parameters: %v", err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return nil, pier.Errorf(pier.Invalid, "parameters: %v", err)
	}
	if err := r.schemas[typ].Validate(doc); err != nil {
		return nil, paramError(typ, err)
	}
	for k, p := range props {
		if _, set := out[k]; !set && p.Default != nil {
			out[k] = p.Default
		}
	}
	return out, nil
}

func coerce(name string, v any, p property) (any, error) {
	s, ok := v.(string)
	if !ok {
		return v, nil
	}
	switch p.Type {
	case "integer":
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, pier.Errorf(pier.Invalid, "parameter %s: %q is not a whole number", name, s)
		}
		return n, nil
	case "number":
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, pier.Errorf(pier.Invalid, "parameter %s: %q is not a number", name, s)
		}
		return f, nil
	case "boolean":
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, pier.Errorf(pier.Invalid, "parameter %s: %q is not true or false", name, s)
		}
		return b, nil
	}
	return v, nil
}

var quoted = regexp.MustCompile(`'([^']+)'`)

// paramError turns a schema validation error into one line per problem,
// each naming the parameter.
func paramError(typ string, err error) error {
	ve, ok := err.(*jsonschema.ValidationError)
	if !ok {
		return pier.Errorf(pier.Invalid, "parameters of %s: %v", typ, err)
	}
	var lines []string
	for _, u := range ve.BasicOutput().Errors {
		if u.Error == nil {
			continue
		}
		msg := u.Error.String()
		name := strings.TrimPrefix(u.InstanceLocation, "/")
		switch {
		case name != "":
			lines = append(lines, fmt.Sprintf("parameter %s: %s", name, msg))
		case strings.Contains(msg, "additional propert"):
			for _, m := range quoted.FindAllStringSubmatch(msg, -1) {
				lines = append(lines, fmt.Sprintf("parameter %s: unknown parameter", m[1]))
			}
		case strings.HasPrefix(msg, "validation failed"):
			// the summary line; the causes follow
		default:
			lines = append(lines, msg)
		}
	}
	if len(lines) == 0 {
		lines = append(lines, ve.Error())
	}
	sort.Strings(lines)
	return pier.Errorf(pier.Invalid, "invalid parameters for %s (see `pier resources types`):\n  %s", typ, strings.Join(lines, "\n  "))
}

// AccessOf checks an access level against typ; "" means the type's
// default.
func (r *Registry) AccessOf(typ string, a Access) (Access, error) {
	d, err := r.Driver(typ)
	if err != nil {
		return "", err
	}
	levels := d.Info().Access
	if a == "" {
		return levels[0], nil
	}
	var names []string
	for _, l := range levels {
		if l == a {
			return a, nil
		}
		names = append(names, string(l))
	}
	return "", pier.Errorf(pier.Invalid, "%s resources offer access %s, not %q", typ, strings.Join(names, ", "), a)
}
