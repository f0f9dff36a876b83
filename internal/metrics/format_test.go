package metrics

import "testing"

func TestFormat(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{FormatRPS(0), "0"}, {FormatRPS(0.042), "0.04"}, {FormatRPS(12.04), "12.0"}, {FormatRPS(1234.5), "1234"},
		{FormatPercent(0, 0), "-"}, {FormatPercent(1, 5), "100.0%"}, {FormatPercent(0.99996, 30000), "99.9%"}, {FormatPercent(0.5, 2), "50.0%"},
		{FormatMillis(0.42), "0.42ms"}, {FormatMillis(3.14), "3.1ms"}, {FormatMillis(120.4), "120ms"}, {FormatMillis(1520), "1.5s"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}
