package proxy

import (
	"testing"
	"time"
)

func TestMetricsUpgradeCountedAs101(t *testing.T) {
	f := newFixture(t)
	f.p.Add("web", "m1", upstream(t, upgradeEcho(t)))
	conn, br := dialUpgrade(t, f, "web.apps.test")
	br.ReadString('\n') // greeting
	conn.Close()        // the request ends when the tunnel closes
	deadline := time.Now().Add(wait)
	for {
		series := gather(t, f.reg, "pier_http_requests_total")
		if len(series) > 0 {
			if len(series) != 1 || series[0].labels["code"] != "101" || series[0].value != 1 {
				t.Fatalf("after one upgraded request: %v, want one request with code 101", series)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("upgraded request never counted")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
