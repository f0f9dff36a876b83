package e2e

import (
	"fmt"
	"sort"
	"testing"
	"time"
)

// BenchmarkColdStart measures a request to a scaled-to-zero app through the
// edge proxy: from sending it to the answer, which includes starting a
// machine and waiting for its health check. Each iteration first waits
// (untimed) for the app to stop for idleness. Run with e.g.
//
//	go test ./internal/e2e -run '^$' -bench ColdStart -benchtime 20x
func BenchmarkColdStart(b *testing.B) {
	for _, rt := range []struct {
		name  string
		start func(testing.TB) *server
	}{{"process", startProcessServer}, {"runc", startRuncServer}} {
		b.Run(rt.name, func(b *testing.B) {
			s := rt.start(b)
			dir := copyApp(b, "go")
			writeFile(b, dir+"/pier.toml", "app = \"cold\"\n[http_service]\nauto_stop_machines = \"stop\"\nidle_timeout = \"1s\"\n")
			if out, err := s.pier("launch", dir, "--yes"); err != nil {
				b.Fatalf("launch: %v\n%s", err, out)
			}
			var took []time.Duration
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				eventually(b, 30*time.Second, "app stopped for idleness", func() error {
					if n := len(s.status("cold").Machines); n != 0 {
						return fmt.Errorf("%d machines", n)
					}
					return nil
				})
				b.StartTimer()
				begin := time.Now()
				code, _, err := s.get("cold", "/")
				if err != nil || code != 200 {
					b.Fatalf("cold request: %d %v", code, err)
				}
				took = append(took, time.Since(begin))
			}
			b.StopTimer()
			sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
			b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(took[(len(took)*99)/100].Microseconds())/1000, "p99-ms")
		})
	}
}
