package main

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const (
	service      = "connbalance.sim.Fleet"
	holdMethod   = "/" + service + "/Hold"
	pingMethod   = "/" + service + "/Ping"
	serverHeader = "connbalance-server"
	// A stream that failed on a READY channel (the server refused it) is opened again after
	// this long, so a server that refuses streams is not spun on. Reconnects are not paced by
	// it: on a channel that is not READY the client waits for grpc-go to change its state.
	reopenFloor = 50 * time.Millisecond
)

// counters are one client's, written by its goroutines and read by the reporter.
type counters struct {
	streams           atomic.Int64 // 1 while the client holds an established stream
	streamBreaks      atomic.Int64
	streamErrors      [codes.Unauthenticated + 1]atomic.Int64 // opens and breaks, by status
	callsOK           atomic.Int64
	callsFailed       [codes.Unauthenticated + 1]atomic.Int64 // unary calls, by status
	failedByCause     [len(causes)]atomic.Int64               // unary calls, by causeOf
	reconnects        atomic.Int64                            // READY again on the same channel
	transientFailures atomic.Int64
	dials             atomic.Int64
	dialErrors        atomic.Int64
	voluntary         atomic.Int64 // channels closed on purpose (random reconnect)
	server            atomic.Pointer[string]
}

type settings struct {
	target        string
	ping          time.Duration
	backoff       time.Duration // 0: grpc-go's defaults (1 s, up to 120 s)
	reconnectMean time.Duration // 0: never redial on purpose
	logFailures   bool          // one JSON line on stderr per failed call
	// The retry group's service config (its retry policy), from --service-config: the launcher
	// fills it from connbalance_sim/retrypolicy.py, the one place the policy is pinned.
	serviceConfig string
}

type client struct {
	id       int
	group    string // "retry" or "failfast"
	settings settings
	counters counters
	pingRNG  *rand.Rand // used by the pinging goroutine only
	lifeRNG  *rand.Rand // used by run's goroutine only
}

func newClient(id int, group string, s settings, seed uint64) *client {
	return &client{
		id: id, group: group, settings: s,
		pingRNG: rand.New(rand.NewPCG(seed, uint64(2*id))),
		lifeRNG: rand.New(rand.NewPCG(seed, uint64(2*id+1))),
	}
}

func (c *client) options() []grpc.DialOption {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})),
		grpc.WithContextDialer(c.dial),
	}
	if c.settings.backoff > 0 {
		// Like the grpcio fleet's: a small base and a ceiling five times it. The connect
		// timeout stays grpc-go's 20 s: a small one aborts handshakes merely slow under load.
		opts = append(opts, grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay: c.settings.backoff, Multiplier: backoff.DefaultConfig.Multiplier,
				Jitter: backoff.DefaultConfig.Jitter, MaxDelay: 5 * c.settings.backoff,
			},
			MinConnectTimeout: 20 * time.Second,
		}))
	}
	if c.group == "retry" {
		opts = append(opts, grpc.WithDefaultServiceConfig(c.settings.serviceConfig))
	}
	return opts
}

func (c *client) dial(ctx context.Context, address string) (net.Conn, error) {
	c.counters.dials.Add(1)
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", address)
	if err != nil {
		c.counters.dialErrors.Add(1)
	}
	return conn, err
}

// run uses one channel (one connection: grpc-go shares none between ClientConns) until stop,
// or until its random lifetime ends once reconnecting is on; then it makes a new one.
func (c *client) run(stop context.Context, reconnecting <-chan struct{}) {
	for stop.Err() == nil {
		conn, err := grpc.NewClient("passthrough:///"+c.settings.target, c.options()...)
		if err != nil {
			panic(err) // a bad target or option: a bug here, not a condition to count
		}
		ctx, cancel := context.WithCancel(stop)
		var wg sync.WaitGroup
		for _, part := range []func(context.Context, *grpc.ClientConn){c.hold, c.pings, c.watch} {
			wg.Add(1)
			go func() { defer wg.Done(); part(ctx, conn) }()
		}
		c.live(stop, reconnecting)
		cancel()
		wg.Wait()
		_ = conn.Close()
	}
}

// live returns at stop, or when this channel's random lifetime (0.5-1.5 x the mean, counted
// from when reconnecting was turned on or the channel made) is over.
func (c *client) live(stop context.Context, reconnecting <-chan struct{}) {
	if c.settings.reconnectMean == 0 {
		<-stop.Done()
		return
	}
	select {
	case <-stop.Done():
		return
	case <-reconnecting:
	}
	lifetime := time.Duration(float64(c.settings.reconnectMean) * (0.5 + c.lifeRNG.Float64()))
	select {
	case <-stop.Done():
	case <-time.After(lifetime):
		c.counters.voluntary.Add(1)
	}
}

// hold keeps one bidi stream open, as a Teleport agent keeps its inventory stream, and opens it
// again whenever it breaks.
func (c *client) hold(ctx context.Context, conn *grpc.ClientConn) {
	desc := &grpc.StreamDesc{StreamName: "Hold", ServerStreams: true, ClientStreams: true}
	for ctx.Err() == nil {
		err := c.holdOnce(ctx, conn, desc)
		if ctx.Err() != nil {
			return
		}
		c.counters.streamErrors[status.Code(err)].Add(1)
		if state := conn.GetState(); state == connectivity.Ready {
			sleep(ctx, reopenFloor)
		} else if state == connectivity.TransientFailure {
			// Fail-fast: opening it now would fail again; grpc-go reconnects on its backoff.
			conn.WaitForStateChange(ctx, state)
		}
	}
}

func (c *client) holdOnce(ctx context.Context, conn *grpc.ClientConn, desc *grpc.StreamDesc) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := conn.NewStream(ctx, desc, holdMethod)
	if err != nil {
		return err
	}
	hello, reply := []byte("hello"), []byte(nil)
	if err := stream.SendMsg(&hello); err != nil {
		// SendMsg says only io.EOF; the status comes with the next receive.
		return stream.RecvMsg(&reply)
	}
	if err := stream.RecvMsg(&reply); err != nil {
		return err
	}
	header, _ := stream.Header()
	c.counters.server.Store(first(header, serverHeader))
	c.counters.streams.Store(1)
	defer func() {
		c.counters.streams.Store(0)
		c.counters.server.Store(nil)
		c.counters.streamBreaks.Add(1)
	}()
	for {
		if err := stream.RecvMsg(&reply); err != nil {
			return err
		}
	}
}

// The causes of a failed call, as the grpcio fleet names them (connbalance_sim/clients.py,
// cause_of), so that the bench accounts for either fleet's failures the same way.
var causes = [...]string{"close_during_call", "refused_connect", "backoff", "deadline", "other"}

const (
	closeDuringCall = iota
	refusedConnect
	inBackoff
	deadline
	other
)

// causeOf says why a unary call failed, from its channel's state when the call began and ended
// and the times the channel entered TRANSIENT_FAILURE while it ran: made while the channel
// waited out its backoff; the connect it waited for failed; no answer within its deadline; made
// on a ready connection that closed under it; anything else. The grpcio fleet's rule.
func causeOf(atStart, atEnd connectivity.State, failedConnects int64, code codes.Code) int {
	switch {
	case atStart == connectivity.TransientFailure:
		return inBackoff
	case failedConnects > 0 || atEnd == connectivity.TransientFailure:
		return refusedConnect
	case code == codes.DeadlineExceeded:
		return deadline
	case atStart == connectivity.Ready:
		return closeDuringCall
	}
	return other
}

// pings makes a unary call every ping (+-20%), as an agent heartbeats; no wait-for-ready, so a
// call made while the channel is in TRANSIENT_FAILURE fails at once unless the policy retries it.
func (c *client) pings(ctx context.Context, conn *grpc.ClientConn) {
	timeout := max(2*time.Second, c.settings.ping)
	sleep(ctx, time.Duration(c.pingRNG.Float64()*float64(c.settings.ping)))
	for ctx.Err() == nil {
		callCtx, cancel := context.WithTimeout(ctx, timeout)
		request, reply := []byte("ping"), []byte(nil)
		atStart, failedBefore := conn.GetState(), c.counters.transientFailures.Load()
		err := conn.Invoke(callCtx, pingMethod, &request, &reply)
		cancel()
		if ctx.Err() != nil {
			return // stopping or redialling: not the server's failure
		}
		if err == nil {
			c.counters.callsOK.Add(1)
		} else {
			c.counters.callsFailed[status.Code(err)].Add(1)
			c.counters.failedByCause[causeOf(atStart, conn.GetState(),
				c.counters.transientFailures.Load()-failedBefore, status.Code(err))].Add(1)
			if c.settings.logFailures {
				logFailure(c, err)
			}
		}
		sleep(ctx, time.Duration(float64(c.settings.ping)*(0.8+0.4*c.pingRNG.Float64())))
	}
}

// watch counts the channel's state changes: READY again after a first READY is a reconnect.
func (c *client) watch(ctx context.Context, conn *grpc.ClientConn) {
	seenReady := false
	for state := conn.GetState(); ; state = conn.GetState() {
		switch state {
		case connectivity.Ready:
			if seenReady {
				c.counters.reconnects.Add(1)
			}
			seenReady = true
		case connectivity.TransientFailure:
			c.counters.transientFailures.Add(1)
		}
		if !conn.WaitForStateChange(ctx, state) {
			return
		}
	}
}

func logFailure(c *client, err error) {
	line, _ := json.Marshal(map[string]any{
		"t": float64(time.Now().UnixNano()) / 1e9, "client": c.id, "group": c.group,
		"code": status.Code(err).String(), "message": status.Convert(err).Message(),
	})
	_, _ = os.Stderr.Write(append(line, '\n'))
}

func first(md metadata.MD, key string) *string {
	if values := md.Get(key); len(values) > 0 {
		return &values[0]
	}
	unknown := "?"
	return &unknown
}

func sleep(ctx context.Context, d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
	}
}
