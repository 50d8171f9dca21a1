// goserve: a Go program (Debian's Go 1.19, CGO_ENABLED=0, static) serving requests inside
// edgevm through the kvm package (guest/go/kvm). GET /goserve/<action>[?n=N]:
//
//	squares   a worker pool of goroutines started before the freeze squares 1..n over channels
//	fanout    n goroutines joined with a sync.WaitGroup, each sleeping 1 ms (time.Sleep)
//	sleep     time.Sleep(n ms)
//	spin      a goroutine spinning without function calls while main sleeps: only the
//	          runtime's asynchronous preemption (SIGURG through tgkill) lets main run again
//	nilptr    a nil pointer dereference: SIGSEGV becomes a Go panic, recovered
//	echo      POST: the body back, with its length in X-Length
//
// Run natively with BENCH_CALLS=N BENCH_URL=/goserve/squares it times N calls of the same
// handler (docs/BENCHMARKS.md).
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"edgevm.local/guest/kvm"
)

type job struct {
	n   int
	out chan<- int
}

func worker(jobs <-chan job) {
	for j := range jobs {
		j.out <- j.n * j.n
	}
}

func param(url, key string, def int) int {
	i := strings.Index(url, "?")
	if i < 0 {
		return def
	}
	for _, kv := range strings.Split(url[i+1:], "&") {
		if strings.HasPrefix(kv, key+"=") {
			if v, err := strconv.Atoi(kv[len(key)+1:]); err == nil {
				return v
			}
		}
	}
	return def
}

func action(url string) string {
	p := strings.TrimPrefix(url, "/")
	if i := strings.Index(p, "?"); i >= 0 {
		p = p[:i]
	}
	parts := strings.Split(p, "/")
	if len(parts) < 2 {
		return ""
	}
	return parts[1]
}

type node struct{ v int }

//go:noinline
func deref(p *node) int { return p.v }

func nilptr() (msg string) {
	defer func() {
		if r := recover(); r != nil {
			msg = fmt.Sprint(r)
		}
	}()
	var p *node
	return strconv.Itoa(deref(p))
}

var spins uint64

//go:noinline
func spin(stop, started *int32) {
	atomic.StoreInt32(started, 1)
	for atomic.LoadInt32(stop) == 0 {
		spins++
	}
}

func handle(req *kvm.Request, jobs chan<- job) (int, string) {
	n := param(req.URL, "n", 8)
	if n < 0 || n > 10000 {
		return 400, "n out of range\n"
	}
	switch action(req.URL) {
	case "squares":
		out := make(chan int, n)
		go func() {
			for i := 1; i <= n; i++ {
				jobs <- job{i, out}
			}
		}()
		sum := 0
		for i := 0; i < n; i++ {
			sum += <-out
		}
		return 200, fmt.Sprintf("squares: %d jobs, sum %d\n", n, sum)
	case "fanout":
		var wg sync.WaitGroup
		results := make(chan int, n)
		start := time.Now()
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				time.Sleep(time.Millisecond)
				results <- i
			}(i)
		}
		wg.Wait()
		close(results)
		sum := 0
		for v := range results {
			sum += v
		}
		slept := time.Since(start) >= time.Millisecond
		return 200, fmt.Sprintf("fanout: %d goroutines, sum %d, slept %v\n", n, sum, slept)
	case "sleep":
		start := time.Now()
		time.Sleep(time.Duration(n) * time.Millisecond)
		ok := time.Since(start) >= time.Duration(n)*time.Millisecond
		return 200, fmt.Sprintf("sleep: %d ms, long enough %v\n", n, ok)
	case "spin":
		var stop, started int32
		go spin(&stop, &started)
		// With one P the spinning goroutine runs from the first yield on: main gets past
		// this loop and its sleep only when the runtime preempts it.
		for atomic.LoadInt32(&started) == 0 {
			runtime.Gosched()
		}
		time.Sleep(time.Duration(n) * time.Millisecond)
		atomic.StoreInt32(&stop, 1)
		return 200, fmt.Sprintf("spin: preempted %v\n", spins > 0)
	case "nilptr":
		return 200, "nilptr: " + nilptr() + "\n"
	case "echo":
		kvm.SetHeader(kvm.Resp, "X-Length: "+strconv.Itoa(len(req.Body)))
		return 200, string(req.Body)
	}
	return 404, "unknown action\n"
}

func main() {
	// A worker pool started during initialization: its goroutines are frozen with the
	// program and serve every request.
	jobs := make(chan job)
	for w := 0; w < 4; w++ {
		go worker(jobs)
	}
	if calls, err := strconv.Atoi(os.Getenv("BENCH_CALLS")); err == nil && calls > 0 {
		// Run natively (not in a VM): time the same handler on BENCH_URL, for
		// docs/BENCHMARKS.md.
		url := os.Getenv("BENCH_URL")
		start := time.Now()
		for i := 0; i < calls; i++ {
			handle(&kvm.Request{Method: "GET", URL: url}, jobs)
		}
		per := time.Since(start) / time.Duration(calls)
		fmt.Printf("%s: %.1f us per call\n", url, float64(per.Nanoseconds())/1000)
		return
	}
	fmt.Println("goserve: ready")
	for {
		req := kvm.NextRequest()
		status, body := handle(req, jobs)
		kvm.Respond(status, "text/plain", []byte(body))
	}
}
