package metrics

// Route is what a request asked for, for the busiest-paths view.
type Route struct{ Method, Path string }

const (
	// maxRoutes bounds the distinct routes kept per Dst app; later ones
	// are counted as Route{Method, otherPath}.
	maxRoutes = 100
	otherPath = "(other)"
	idSegment = ":id"
)

// routeTable is one Dst app's routes, keyed by method + " " + path. Guarded
// by Registry.mu.
type routeTable struct {
	routes map[string]*series // at most maxRoutes
	other  map[string]*series // overflow, by method
}

// find returns the series a request with the given key counts in, or nil
// if it does not exist yet.
func (rt *routeTable) find(key []byte, method string) *series {
	if s := rt.routes[string(key)]; s != nil {
		return s
	}
	if len(rt.routes) >= maxRoutes {
		return rt.other[method]
	}
	return nil
}

// routeKey appends method + " " + path to dst, both normalized, and returns
// it with the normalized method.
func routeKey(dst []byte, r Route) ([]byte, string) {
	m := normMethod(r.Method)
	dst = append(dst, m...)
	dst = append(dst, ' ')
	return normPath(dst, r.Path), m
}

// normMethod bounds methods to the standard ones: a client can send any
// token as a method, and each would otherwise be a route.
func normMethod(m string) string {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE":
		return m
	case "":
		return "GET" // as net/http reads an empty method
	}
	return "OTHER"
}

// normPath appends p to dst without its query or fragment, with a leading
// slash, and with each segment that looks like an identifier replaced by
// ":id".
func normPath(dst []byte, p string) []byte {
	for i := 0; i < len(p); i++ {
		if p[i] == '?' || p[i] == '#' {
			p = p[:i]
			break
		}
	}
	if p == "" || p[0] != '/' {
		dst = append(dst, '/')
	}
	for i := 0; i < len(p); {
		if p[i] == '/' {
			dst = append(dst, '/')
			i++
			continue
		}
		j := i
		for j < len(p) && p[j] != '/' {
			j++
		}
		if seg := p[i:j]; isID(seg) {
			dst = append(dst, idSegment...)
		} else {
			dst = append(dst, seg...)
		}
		i = j
	}
	return dst
}

// isID reports whether a path segment is a number, a UUID or a long hex
// string (16+ digits: hashes, object IDs).
func isID(s string) bool {
	digits, hex := true, true
	for i := 0; i < len(s); i++ {
		c := s[i]
		isDigit := '0' <= c && c <= '9'
		digits = digits && isDigit
		hex = hex && (isDigit || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F')
	}
	switch {
	case s == "":
		return false
	case digits, hex && len(s) >= 16:
		return true
	}
	return isUUID(s)
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}
