// The goroutine fan-out tier of the linking evaluation (tests/src/topology.rs): Go's standard
// library only, built from this one file (`go build eval_fanout.go`, no module).
//
//	eval_fanout LEAF_PORT
//
// Serves GET /r/<id> with net/http: the handler starts one goroutine per call, GET /b/<id> and
// GET /t/<id> on the Python leaf service, through one shared keep-alive http.Transport, waits
// for both (sync.WaitGroup) and answers 200 "ok <id>". The transport writes requests from each
// connection's own writer goroutine, on whichever OS thread runs it. Binds an ephemeral port on
// 127.0.0.1 and prints "PORT <n>" once listening. Nothing here knows about tracing.
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

func main() {
	leaf := os.Args[1]
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     300 * time.Second,
		},
	}
	get := func(path string) error {
		r, err := client.Get("http://127.0.0.1:" + leaf + path)
		if err != nil {
			return err
		}
		defer r.Body.Close()
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return err
		}
		if r.StatusCode != 200 {
			return fmt.Errorf("GET %s: %d", path, r.StatusCode)
		}
		return nil
	}
	http.HandleFunc("/r/", func(w http.ResponseWriter, req *http.Request) {
		id := strings.TrimPrefix(req.URL.Path, "/r/")
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, p := range []string{"/b/", "/t/"} {
			wg.Add(1)
			go func(i int, p string) {
				defer wg.Done()
				errs[i] = get(p + id)
			}(i, p)
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				w.WriteHeader(502)
				fmt.Fprintf(w, "%v\n", err)
				return
			}
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "ok %s\n", id)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Printf("PORT %d\n", ln.Addr().(*net.TCPAddr).Port)
	server := &http.Server{IdleTimeout: 300 * time.Second}
	panic(server.Serve(ln))
}
