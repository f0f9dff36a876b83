// Command guest is the program bench/machines.sh runs inside machines: a
// tiny HTTP server on :$PORT (default 8080) that answers every request with
// one line. It is built with CGO_ENABLED=0, so it is one static binary that
// needs nothing else in the image.
package main

import (
	"net/http"
	"os"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("hello from a machine\n"))
	})
	if err := http.ListenAndServe(":"+port, nil); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
}
