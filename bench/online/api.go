package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/internal/seed"
	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// api is a simulated tokenization API: an open-loop stream of requests at a
// fixed rate, 70 % reads (fetch a token by id, Decrypt its data key, open
// it) and 30 % writes (seal a token under the current key with a fresh data
// key, then UPDATE an existing row or INSERT a new one). It uses the SDK's
// default retryer, as a service written without this tool in mind would.
// Latency is measured from each request's scheduled start, so a stall
// shows up in full (no coordinated omission).
type api struct {
	db   *pgxpool.Pool
	kc   *kmsclient.Client
	rate float64

	mu      sync.Mutex
	ids     []string
	current string // key ARN writes seal under
	// keyInUse is held (read) by every write from reading current to its
	// commit, so that setKey returns only when no write under the previous
	// key is still in flight: as a live API switches keys before the Job
	// starts, a token sealed under OLD never lands behind the run's cursor.
	keyInUse sync.RWMutex
	samples  []sample

	throttled atomic.Int64 // KMS attempts answered ThrottlingException
	attempts  atomic.Int64 // KMS attempts
	nextID    atomic.Int64
}

type sample struct {
	at      time.Time
	latency time.Duration
	err     string // what failed, as errorKind names it; "" = success
	write   bool
}

// errorKind names what made a request fail, short enough to count: the KMS
// error code, the Postgres SQLSTATE, or the start of the message. Messages
// here name row ids, never a token or a key.
func errorKind(err error) string {
	var pe *pgconn.PgError
	var ae smithy.APIError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &pe):
		return "postgres " + pe.Code
	case errors.As(err, &ae):
		return "kms " + ae.ErrorCode()
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	}
	msg := err.Error()
	if len(msg) > 60 {
		msg = msg[:60]
	}
	return msg
}

func newAPI(db *pgxpool.Pool, k *testbed.KMSServer, endpoint string, ids []string, key string, perSec float64) *api {
	a := &api{db: db, rate: perSec, ids: ids, current: key}
	cfg := aws.Config{
		Region:      k.Region(),
		Credentials: credentials.NewStaticCredentialsProvider(testbed.DummyAccessKeyID, testbed.DummySecretAccessKey, ""),
		HTTPClient:  &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}},
		Retryer:     func() aws.Retryer { return retry.NewStandard() },
	}
	client := kms.NewFromConfig(cfg, func(o *kms.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		o.APIOptions = append(o.APIOptions, a.countAttempts)
	})
	a.kc = kmsclient.NewClient(client, "payment_methods", nil)
	return a
}

// countAttempts runs once per HTTP attempt, inside the SDK's retry loop.
func (a *api) countAttempts(stack *middleware.Stack) error {
	return stack.Finalize.Add(middleware.FinalizeMiddlewareFunc("apiAttempts",
		func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
			out, md, err := next.HandleFinalize(ctx, in)
			a.attempts.Add(1)
			var ae smithy.APIError
			if errors.As(err, &ae) && ae.ErrorCode() == "ThrottlingException" {
				a.throttled.Add(1)
			}
			return out, md, err
		}), middleware.After)
}

func (a *api) setKey(arn string) {
	a.keyInUse.Lock()
	defer a.keyInUse.Unlock()
	a.mu.Lock()
	a.current = arn
	a.mu.Unlock()
}

// run sends requests until ctx ends.
func (a *api) run(ctx context.Context) {
	var wg sync.WaitGroup
	jobs := make(chan time.Time, 1024)
	for range 32 {
		wg.Go(func() {
			for due := range jobs {
				write := rand.Float64() < 0.3
				var err error
				if write {
					err = a.write(ctx)
				} else {
					err = a.read(ctx)
				}
				if ctx.Err() != nil {
					return
				}
				a.mu.Lock()
				a.samples = append(a.samples, sample{at: due, latency: time.Since(due), err: errorKind(err), write: write})
				a.mu.Unlock()
			}
		})
	}
	interval := time.Duration(float64(time.Second) / a.rate)
	next := time.Now()
	for ctx.Err() == nil {
		next = next.Add(interval)
		time.Sleep(time.Until(next))
		select {
		case jobs <- next:
		default: // the pool is saturated: the request is an error, as a timeout would be
			a.mu.Lock()
			a.samples = append(a.samples, sample{at: next, latency: time.Second, err: "pool saturated"})
			a.mu.Unlock()
		}
	}
	close(jobs)
	wg.Wait()
}

func (a *api) pick() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ids[rand.N(len(a.ids))]
}

func (a *api) read(ctx context.Context) error {
	id := a.pick()
	var tok []byte
	if err := a.db.QueryRow(ctx, `SELECT encrypted_token FROM payment_methods WHERE id = $1`, id).Scan(&tok); err != nil {
		return fmt.Errorf("read %s: %w", id, err)
	}
	env, err := envelope.Parse(tok)
	if err != nil {
		return err
	}
	dek, err := a.kc.Decrypt(ctx, env.KID, env.WDEK)
	if err != nil {
		return err
	}
	defer dek.Zero()
	plain, err := envelope.Open(env, dek, "payment_methods", id)
	if err != nil {
		return err
	}
	if string(plain) != string(seed.Plaintext(id)) {
		return fmt.Errorf("row %s opened to the wrong plaintext", id)
	}
	return nil
}

func (a *api) write(ctx context.Context) error {
	a.keyInUse.RLock()
	defer a.keyInUse.RUnlock()
	a.mu.Lock()
	key := a.current
	a.mu.Unlock()
	insert := rand.Float64() < 0.5
	var id string
	if insert {
		id = fmt.Sprintf("00000000-0000-4000-8000-%012x", a.nextID.Add(1))
	} else {
		id = a.pick()
	}
	dek, wdek, err := a.kc.GenerateDataKey(ctx, key)
	if err != nil {
		return err
	}
	env, err := envelope.SealRandom(dek, envelope.SealOptions{KID: key, WDEK: wdek, Namespace: "payment_methods", RowID: id}, seed.Plaintext(id))
	dek.Zero()
	if err != nil {
		return err
	}
	tok, err := env.Marshal()
	if err != nil {
		return err
	}
	if insert {
		if _, err := a.db.Exec(ctx, `INSERT INTO payment_methods (id, encrypted_token) VALUES ($1, $2)`, id, tok); err != nil {
			return err
		}
		a.mu.Lock()
		a.ids = append(a.ids, id)
		a.mu.Unlock()
		return nil
	}
	_, err = a.db.Exec(ctx, `UPDATE payment_methods SET encrypted_token = $2, updated_at = now() WHERE id = $1`, id, tok)
	return err
}

// apiStats are the API's figures over one phase.
type apiStats struct {
	Requests   int     `json:"requests"`
	Errors     int     `json:"errors"`
	P50MS      float64 `json:"p50_ms"`
	P99MS      float64 `json:"p99_ms"`
	MaxMS      float64 `json:"max_ms"`
	KMSAttempt int64   `json:"kms_attempts"`
	Throttled  int64   `json:"kms_throttled"`
	// Failed lists each error: when, in seconds into the phase, and what.
	Failed []apiError `json:"failed,omitempty"`
}

type apiError struct {
	AtS  float64 `json:"at_s"`
	Kind string  `json:"kind"`
}

// window returns the stats of requests scheduled in [from, to).
func (a *api) window(from, to time.Time) apiStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	var lat []time.Duration
	var s apiStats
	for _, x := range a.samples {
		if x.at.Before(from) || !x.at.Before(to) {
			continue
		}
		s.Requests++
		if x.err != "" {
			s.Errors++
			s.Failed = append(s.Failed, apiError{AtS: x.at.Sub(from).Seconds(), Kind: x.err})
		}
		lat = append(lat, x.latency)
	}
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		s.P50MS = ms(lat[len(lat)/2])
		s.P99MS = ms(lat[min(len(lat)-1, len(lat)*99/100)])
		s.MaxMS = ms(lat[len(lat)-1])
	}
	return s
}
