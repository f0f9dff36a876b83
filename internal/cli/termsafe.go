package cli

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// termSafe makes text from apps and builds (untrusted) safe to print on the
// operator's terminal: control characters other than newline and tab (a
// carriage return that overwrites pier's prefixes, ESC sequences that move
// the cursor, retitle the window or rewrite the screen, C1 controls) are
// shown escaped, as \r or \x1b, instead of acting.
func termSafe(s string) string {
	if !strings.ContainsFunc(s, isControl) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case !isControl(r):
			b.WriteRune(r)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
	}
	return b.String()
}

// isControl is true for C0 controls but newline and tab, DEL, C1 controls,
// and the replacement of invalid UTF-8 (which may hide a C1 byte).
func isControl(r rune) bool {
	return (r < 0x20 && r != '\n' && r != '\t') || (r >= 0x7f && r < 0xa0) || r == utf8.RuneError
}

// safeWriter passes writes through termSafe.
type safeWriter struct{ w io.Writer }

func (s safeWriter) Write(p []byte) (int, error) {
	if _, err := io.WriteString(s.w, termSafe(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// untrustedOut is where commands print what apps and builds wrote: stdout,
// escaped when it is a terminal (kept as is in files and pipes).
func (e *env) untrustedOut() io.Writer {
	if isTerminal(e.stdout) {
		return safeWriter{e.stdout}
	}
	return e.stdout
}
