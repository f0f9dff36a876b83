package metrics

import "fmt"

// The formats below are shared by `pier stat`, `pier top` and the graph's
// renderings, so a figure reads the same everywhere.

// FormatRPS formats requests per second: two decimals below 0.1, one
// below 100, none above.
func FormatRPS(r float64) string {
	switch {
	case r == 0:
		return "0"
	case r < 0.1:
		return fmt.Sprintf("%.2f", r)
	case r < 100:
		return fmt.Sprintf("%.1f", r)
	}
	return fmt.Sprintf("%.0f", r)
}

// FormatPercent formats a success rate with one decimal, or "-" without
// requests. It never rounds a failure away: 99.96% shows as 99.9%.
func FormatPercent(rate float64, requests int64) string {
	if requests == 0 {
		return "-"
	}
	s := fmt.Sprintf("%.1f%%", rate*100)
	if s == "100.0%" && rate < 1 {
		return "99.9%"
	}
	return s
}

// FormatMillis formats a latency given in milliseconds: 0.42ms, 3.1ms,
// 120ms, 1.5s.
func FormatMillis(ms float64) string {
	switch {
	case ms < 1:
		return fmt.Sprintf("%.2fms", ms)
	case ms < 10:
		return fmt.Sprintf("%.1fms", ms)
	case ms < 1000:
		return fmt.Sprintf("%.0fms", ms)
	}
	return fmt.Sprintf("%.1fs", ms/1000)
}
