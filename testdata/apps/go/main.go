// A sample Go app for pier's tests: answers with its version on $PORT.
package main

import (
	"fmt"
	"net/http"
	"os"
	"time"
)

func main() {
	version := os.Getenv("VERSION")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from go version=%s secret=%s\n", version, os.Getenv("GREETING_SECRET"))
	})
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("/say", func(w http.ResponseWriter, r *http.Request) {
		fmt.Println(r.FormValue("line")) // to the app's logs
		fmt.Fprintln(w, "said")
	})
	http.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond)
		fmt.Fprintf(w, "slow version=%s\n", version)
	})
	http.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-Id"} {
			fmt.Fprintf(w, "%s: %s\n", h, r.Header.Get(h))
		}
	})
	// START_DELAY (a duration) makes the app slow to start, so a test can
	// catch a deploy in the middle of its rollout.
	if d, err := time.ParseDuration(os.Getenv("START_DELAY")); err == nil {
		fmt.Println("starting in", d)
		time.Sleep(d)
	}
	fmt.Println("listening on", os.Getenv("PORT"))
	if err := http.ListenAndServe(":"+os.Getenv("PORT"), nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
