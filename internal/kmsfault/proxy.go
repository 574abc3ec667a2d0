// Package kmsfault is an HTTP proxy placed between reencrypt and a KMS
// emulator. It counts requests by operation and injects the faults a real KMS
// shows: throttling, 5xx, latency with jitter, connection resets, hangs, and
// per-key access denial. Tests, the soak suite and the benchmark use it; it is
// never part of the shipped binary's path.
package kmsfault

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Faults is what the proxy does to each request. Rates are probabilities in
// [0, 1] drawn independently per request.
type Faults struct {
	Throttle float64       // answer 400 ThrottlingException
	Error5xx float64       // answer 500 KMSInternalException
	Reset    float64       // close the connection without an answer
	Hang     float64       // hold the request until the client gives up
	Latency  time.Duration // added before forwarding
	Jitter   time.Duration // uniform extra latency in [0, Jitter)
	// Deny answers AccessDeniedException to any request whose body mentions
	// one of these key ARNs or ids.
	Deny []string
	// Quota, when > 0, is a request rate shared by every client of the
	// proxy, enforced like KMS enforces an account's quota: a token bucket
	// (a tenth of a second's worth of burst) answering ThrottlingException
	// to requests above it.
	Quota float64
}

// Proxy forwards KMS JSON requests to an upstream endpoint.
type Proxy struct {
	srv      *http.Server
	ln       net.Listener
	upstream *httputil.ReverseProxy

	mu        sync.Mutex
	faults    Faults
	quota     *rate.Limiter    // nil without Faults.Quota
	throttled atomic.Int64     // ThrottlingException answers, injected or by quota
	counts    map[string]int64 // forwarded requests by operation
	total     atomic.Int64     // every request seen, faulted or not
	window    rateWindow
}

// Start listens on a free loopback port and forwards to upstream
// (for example "http://127.0.0.1:4599").
func Start(upstream string) (*Proxy, error) {
	u, err := url.Parse(upstream)
	if err != nil {
		return nil, fmt.Errorf("upstream url: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 512, IdleConnTimeout: 30 * time.Second}
	rp.ErrorLog = nil
	p := &Proxy{ln: ln, upstream: rp, counts: map[string]int64{}}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// Endpoint is the proxy's URL, to be used as AWS_ENDPOINT_URL_KMS.
func (p *Proxy) Endpoint() string { return "http://" + p.ln.Addr().String() }

// Close stops the proxy.
func (p *Proxy) Close() error { return p.srv.Close() }

// Set replaces the faults.
func (p *Proxy) Set(f Faults) {
	p.mu.Lock()
	p.faults = f
	p.quota = nil
	if f.Quota > 0 {
		p.quota = rate.NewLimiter(rate.Limit(f.Quota), max(1, int(f.Quota/10)))
	}
	p.mu.Unlock()
}

// Throttled counts the ThrottlingException answers since the last
// ResetCounts, injected or for the quota.
func (p *Proxy) Throttled() int64 { return p.throttled.Load() }

// Counts returns the requests forwarded upstream, by operation ("Decrypt", ...).
func (p *Proxy) Counts() map[string]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int64, len(p.counts))
	for k, v := range p.counts {
		out[k] = v
	}
	return out
}

// Total is every request received, answered by a fault or forwarded.
func (p *Proxy) Total() int64 { return p.total.Load() }

// ResetCounts zeroes the counters and the rate window.
func (p *Proxy) ResetCounts() {
	p.mu.Lock()
	p.counts = map[string]int64{}
	p.window = rateWindow{}
	p.mu.Unlock()
	p.total.Store(0)
	p.throttled.Store(0)
}

// MaxRate is the largest number of requests received in any one-second
// window (sliding in 100 ms steps) since the last ResetCounts.
func (p *Proxy) MaxRate() float64 { return p.MaxRateOver(time.Second) }

// MaxRateOver is the busiest window of length d (a multiple of 100 ms), in
// requests per second. Longer windows smooth out the bunching that
// scheduling delays on a loaded machine add between sender and proxy.
func (p *Proxy) MaxRateOver(d time.Duration) float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := max(1, int64(d/(100*time.Millisecond)))
	return p.window.max(n) / (float64(n) / 10)
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.total.Add(1)
	op := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "TrentService.")
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))

	p.mu.Lock()
	f, quota := p.faults, p.quota
	p.window.add(time.Now())
	p.mu.Unlock()
	if quota != nil && !quota.Allow() {
		p.throttled.Add(1)
		writeError(w, http.StatusBadRequest, "ThrottlingException", "Rate exceeded")
		return
	}

	if d := f.Latency + jitter(f.Jitter); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	switch {
	case hit(f.Reset):
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				if tc, ok := conn.(*net.TCPConn); ok {
					_ = tc.SetLinger(0) // RST, not FIN
				}
				_ = conn.Close()
				return
			}
		}
		writeError(w, http.StatusInternalServerError, "KMSInternalException", "connection reset stand-in")
		return
	case hit(f.Hang):
		<-r.Context().Done()
		return
	case hit(f.Throttle):
		p.throttled.Add(1)
		writeError(w, http.StatusBadRequest, "ThrottlingException", "Rate exceeded")
		return
	case hit(f.Error5xx):
		writeError(w, http.StatusInternalServerError, "KMSInternalException", "injected internal error")
		return
	}
	for _, key := range f.Deny {
		if key != "" && bytes.Contains(body, []byte(key)) {
			writeError(w, http.StatusBadRequest, "AccessDeniedException",
				"User is not authorized to perform kms:"+op+" on this resource")
			return
		}
	}
	p.mu.Lock()
	p.counts[op]++
	p.mu.Unlock()
	p.upstream.ServeHTTP(w, r)
}

func hit(rate float64) bool { return rate > 0 && rand.Float64() < rate }

func jitter(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return rand.N(max)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-ErrorType", code)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"__type": code, "message": msg})
}

// rateWindow counts requests in 100 ms buckets to find the busiest second.
type rateWindow struct {
	buckets map[int64]int64
}

func (rw *rateWindow) add(t time.Time) {
	if rw.buckets == nil {
		rw.buckets = map[int64]int64{}
	}
	rw.buckets[t.UnixMilli()/100]++
}

func (rw *rateWindow) max(buckets int64) float64 {
	var best int64
	for start := range rw.buckets {
		var sum int64
		for i := int64(0); i < buckets; i++ {
			sum += rw.buckets[start+i]
		}
		best = max(best, sum)
	}
	return float64(best)
}
