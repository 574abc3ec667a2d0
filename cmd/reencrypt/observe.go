package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/push"

	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
)

// serveMetrics serves /metrics on METRICS_ADDR while the run lasts.
func (a *app) serveMetrics(ctx context.Context) (stop func(), err error) {
	if a.cfg.MetricsAddr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return nil, configError("METRICS_ADDR %q: %v", a.cfg.MetricsAddr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Warn("metrics server stopped", "err", err)
		}
	}()
	a.log.Info("serving metrics", "addr", ln.Addr().String())
	return func() {
		c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(c)
	}, nil
}

// pushMetrics sends the final metrics to PUSHGATEWAY_URL, grouped by job and
// shard so that the pods of one Job do not overwrite each other.
func (a *app) pushMetrics() {
	if a.cfg.PushgatewayURL == "" {
		return
	}
	err := push.New(a.cfg.PushgatewayURL, "reencrypt").
		Grouping("shard", itoa(a.cfg.ShardIndex)).
		Gatherer(a.reg).Push()
	if err != nil {
		a.log.Warn("push metrics", "err", err)
	}
}

// kmsRequestCounts sums KMS attempts by operation, for the end summary.
func (a *app) kmsRequestCounts() map[string]int64 {
	out := map[string]int64{}
	mfs, err := a.reg.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		if mf.GetName() != "reencrypt_kms_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "operation" {
					out[l.GetValue()] += int64(m.GetCounter().GetValue())
				}
			}
		}
	}
	return out
}

// startProgress logs progress every few seconds while the run lasts.
func (a *app) startProgress(ctx context.Context, store *checkpoint.Store, e *batch.Engine) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				p := e.Progress()
				a.log.Info("progress", "rows", p.Rows(), "rotated", p.Rotated, "quarantined", p.Quarantined)
			}
		}
	}()
	return func() { close(done); <-finished }
}

func itoa(i int) string {
	return strconv.Itoa(i)
}
