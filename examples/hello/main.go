// hello is the demo app of pier's quickstart.
package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello from pier! This is %s, release v%s, machine %s.\n",
			os.Getenv("PIER_APP_NAME"), os.Getenv("PIER_RELEASE_VERSION"), os.Getenv("PIER_MACHINE_ID"))
	})
	fmt.Println("hello listening on port", os.Getenv("PORT"))
	if err := http.ListenAndServe(":"+os.Getenv("PORT"), nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
