// Command goclients is a fleet of grpc-go clients for the simulator's server
// (python -m connbalance_sim.server, service connbalance.sim.Fleet): clients shaped like
// Teleport's agents, which are Go programs on grpc-go.
//
// Each client has a ClientConn of its own (one connection), holds one long-lived bidi stream
// (Hold) and makes a unary call (Ping) every --ping seconds. Reconnecting is left to grpc-go: its
// backoff (--backoff-ms as the base, five times it as the ceiling; 0 for grpc-go's defaults)
// and, in the "retry" group, the retry policy of the service config given as --service-config
// JSON (the launchers fill it from connbalance_sim/retrypolicy.py: UNAVAILABLE, 5 attempts,
// 0.1 s to 1 s). The "failfast" group (--failfast of the --count clients, spread evenly) has no
// retry policy. No call waits for ready. With --random-reconnect MEAN each client also closes
// its channel after 0.5-1.5 x MEAN and makes a new one, once SIGUSR1 has arrived.
//
// Every --report seconds it prints one JSON line: the grpcio fleet's counters (clients, streams,
// calls_ok, calls_failed, stream_breaks, voluntary), what grpc-go adds (calls failed and stream
// errors by status code, failed calls by cause as the grpcio fleet names them, reconnects,
// transient failures, dials), how many streams each server holds (its connbalance-server
// metadata), the same per group, and with --per-client one entry per client. The last line, at SIGTERM, SIGINT or --lifetime, has "done": true. With
// --log-failures each failed call is also one JSON line on stderr: when, which client, the status.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
)

type totals struct {
	Clients           int              `json:"clients"`
	Streams           int64            `json:"streams"`
	CallsOK           int64            `json:"calls_ok"`
	CallsFailed       int64            `json:"calls_failed"`
	FailedByCode      map[string]int64 `json:"failed_by_code"`
	FailedByCause     map[string]int64 `json:"failed_by_cause"`
	StreamBreaks      int64            `json:"stream_breaks"`
	StreamErrors      map[string]int64 `json:"stream_errors_by_code"`
	Reconnects        int64            `json:"reconnects"`
	TransientFailures int64            `json:"transient_failures"`
	Dials             int64            `json:"dials"`
	DialErrors        int64            `json:"dial_errors"`
	Voluntary         int64            `json:"voluntary"`
	Servers           map[string]int   `json:"servers"`
}

type perClient struct {
	ID     int    `json:"id"`
	Group  string `json:"group"`
	Server string `json:"server"`
	totals
}

type report struct {
	T float64 `json:"t"`
	totals
	Groups    map[string]*totals `json:"groups"`
	PerClient []perClient        `json:"per_client,omitempty"`
	Done      bool               `json:"done,omitempty"`
}

func newTotals() *totals {
	return &totals{FailedByCode: map[string]int64{}, FailedByCause: map[string]int64{},
		StreamErrors: map[string]int64{}, Servers: map[string]int{}}
}

func (t *totals) add(c *counters) {
	t.Clients++
	t.Streams += c.streams.Load()
	t.StreamBreaks += c.streamBreaks.Load()
	for code := range c.callsFailed {
		if n := c.callsFailed[code].Load(); n > 0 {
			t.CallsFailed += n
			t.FailedByCode[codes.Code(code).String()] += n
		}
		if n := c.streamErrors[code].Load(); n > 0 {
			t.StreamErrors[codes.Code(code).String()] += n
		}
	}
	for cause, name := range causes {
		if n := c.failedByCause[cause].Load(); n > 0 {
			t.FailedByCause[name] += n
		}
	}
	t.CallsOK += c.callsOK.Load()
	t.Reconnects += c.reconnects.Load()
	t.TransientFailures += c.transientFailures.Load()
	t.Dials += c.dials.Load()
	t.DialErrors += c.dialErrors.Load()
	t.Voluntary += c.voluntary.Load()
	if server := c.server.Load(); server != nil {
		t.Servers[*server]++
	}
}

func snapshot(clients []*client, perClientToo bool) report {
	all := newTotals()
	r := report{T: float64(time.Now().UnixNano()) / 1e9, Groups: map[string]*totals{}}
	for _, c := range clients {
		all.add(&c.counters)
		if r.Groups[c.group] == nil {
			r.Groups[c.group] = newTotals()
		}
		r.Groups[c.group].add(&c.counters)
		if perClientToo {
			one := newTotals()
			one.add(&c.counters)
			entry := perClient{ID: c.id, Group: c.group, totals: *one}
			if server := c.counters.server.Load(); server != nil {
				entry.Server = *server
			}
			r.PerClient = append(r.PerClient, entry)
		}
	}
	r.totals = *all
	return r
}

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

func main() {
	target := flag.String("target", "", "HOST:PORT of the balancer or server (required)")
	count := flag.Int("count", 100, "clients, one connection each")
	failfast := flag.Int("failfast", 0, "of which this many have no retry policy")
	ping := flag.Float64("ping", 1.0, "seconds between a client's unary calls")
	backoffMS := flag.Int("backoff-ms", 100, "grpc-go's reconnect base delay (0: its default, 1 s)")
	seed := flag.Uint64("seed", 1, "seed for the clients' jitter")
	reconnect := flag.Float64("random-reconnect", 0, "MEAN seconds between voluntary redials, from SIGUSR1 (0: never)")
	every := flag.Float64("report", 0.5, "seconds between report lines")
	lifetime := flag.Float64("lifetime", 3600, "seconds to run")
	ramp := flag.Float64("ramp", 1.0, "seconds to start all clients")
	perClientToo := flag.Bool("per-client", false, "add one entry per client to each report")
	logFailures := flag.Bool("log-failures", false, "one JSON line on stderr per failed call")
	serviceConfig := flag.String("service-config", "", "the retry group's service config, JSON (needed unless --failfast is --count)")
	flag.Parse()
	if *target == "" || *count < 1 || *failfast < 0 || *failfast > *count || *ping <= 0 {
		fmt.Fprintln(os.Stderr, "goclients: needs --target, --count >= 1, 0 <= --failfast <= --count, --ping > 0")
		os.Exit(2)
	}
	if *failfast < *count && !json.Valid([]byte(*serviceConfig)) {
		fmt.Fprintln(os.Stderr, "goclients: --service-config must be the retry group's service config as JSON (connbalance_sim.retrypolicy)")
		os.Exit(2)
	}

	stop, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	stop, cancelLifetime := context.WithTimeout(stop, seconds(*lifetime))
	defer cancelLifetime()
	reconnecting := make(chan struct{})
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		select {
		case <-usr1:
			close(reconnecting)
		case <-stop.Done():
		}
	}()

	s := settings{target: *target, ping: seconds(*ping),
		backoff: time.Duration(*backoffMS) * time.Millisecond, reconnectMean: seconds(*reconnect),
		logFailures: *logFailures, serviceConfig: *serviceConfig}
	clients := make([]*client, *count)
	for i := range clients {
		group := "retry"
		if (i+1)*(*failfast)/(*count) > i*(*failfast)/(*count) {
			group = "failfast"
		}
		clients[i] = newClient(i, group, s, *seed)
	}

	out := json.NewEncoder(os.Stdout)
	var wg sync.WaitGroup
	wg.Add(1) // the starter's own, so that Wait never runs between two of its Adds
	go func() {
		defer wg.Done()
		// Started as they would be in a real fleet: spread over --ramp, not all at once.
		for _, c := range clients {
			if stop.Err() != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); c.run(stop, reconnecting) }()
			sleep(stop, seconds(*ramp/float64(*count)))
		}
	}()
	ticker := time.NewTicker(seconds(*every))
	defer ticker.Stop()
	for stop.Err() == nil {
		_ = out.Encode(snapshot(clients, *perClientToo))
		select {
		case <-stop.Done():
		case <-ticker.C:
		}
	}
	wg.Wait()
	final := snapshot(clients, *perClientToo)
	final.Done = true
	_ = out.Encode(final)
}
