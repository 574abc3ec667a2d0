package cli

// What an operator watches during a run: the /metrics endpoint, the final
// Pushgateway push, the progress reporter (a bar on a terminal, periodic
// JSON log lines otherwise) and the gauges it keeps current.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/push"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// progressEvery is the interval between progress log lines (run) and scan
// log lines (plan, status, verify). Tests shorten it.
var progressEvery = 10 * time.Second

// progressPoll is how often the reporter reads the pass's status from
// Postgres, to move the bar and the ranges and rows-remaining gauges. The
// query reads one row per range: cheap at any table size.
var progressPoll = time.Second

// pushTimeout bounds the final push: a hung Pushgateway must not eat the
// pod's termination grace period.
const pushTimeout = 10 * time.Second

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
			a.log.WarnContext(ctx, "metrics server stopped", "err", err)
		}
	}()
	a.log.InfoContext(ctx, "serving metrics", "addr", ln.Addr().String())
	return func() {
		c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(c)
	}, nil
}

// pushMetrics sends the final metrics to PUSHGATEWAY_URL, grouped by job and
// shard (PUT /metrics/job/reencrypt/shard/N) so that the pods of one Job do
// not overwrite each other.
func (a *app) pushMetrics() {
	if a.cfg.PushgatewayURL == "" {
		return
	}
	err := push.New(a.cfg.PushgatewayURL, "reencrypt").
		Grouping("shard", strconv.Itoa(a.cfg.ShardIndex)).
		Client(&http.Client{Timeout: pushTimeout}).
		Gatherer(a.reg).Push()
	if err != nil {
		a.log.Warn("push metrics to the Pushgateway failed", "err", redactUserinfo(err.Error(), a.cfg.PushgatewayURL))
		return
	}
	a.log.Info("metrics pushed to the Pushgateway", "job", "reencrypt", "shard", a.cfg.ShardIndex)
}

// redactUserinfo masks the password of rawURL wherever it appears in msg:
// the push error quotes the URL, which may carry basic-auth credentials.
func redactUserinfo(msg, rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.User == nil {
		return msg
	}
	if pw, ok := u.User.Password(); ok && pw != "" {
		msg = strings.ReplaceAll(msg, pw, "xxxxx")
		msg = strings.ReplaceAll(msg, url.QueryEscape(pw), "xxxxx")
	}
	return msg
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

// logWriter is the logger's output. While a progress bar is on screen it
// clears the bar before each log record and draws it again after, so that
// bar and JSON lines do not mangle each other on one terminal. Every use of
// the bar goes through its mutex.
type logWriter struct {
	mu  sync.Mutex
	w   io.Writer
	bar *progressbar.ProgressBar
}

func newLogWriter(w io.Writer) *logWriter { return &logWriter{w: w} }

func (l *logWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.bar != nil {
		_ = l.bar.Clear()
	}
	n, err := l.w.Write(p)
	if l.bar != nil {
		_ = l.bar.RenderBlank()
	}
	return n, err
}

// withBar runs f with the bar (nil when none), under the writer's mutex.
func (l *logWriter) withBar(f func(bar *progressbar.ProgressBar)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f(l.bar)
}

func (l *logWriter) setBar(bar *progressbar.ProgressBar) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.bar != nil && bar == nil {
		_ = l.bar.Clear() // the end summary takes the line
	}
	l.bar = bar
}

// isTerminal reports whether w is a terminal (PROGRESS=auto shows the bar
// only then: a bar in a pod's log is noise).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// wantBar applies PROGRESS: on, off, or auto (a terminal only).
func (a *app) wantBar() bool {
	switch a.cfg.Progress {
	case "on":
		return true
	case "auto":
		return isTerminal(a.stderr)
	}
	return false
}

// progress reports a run's progress: the whole pass's (every process's) from
// the checkpoints, and this process's from the engine.
type progress struct {
	a     *app
	store *checkpoint.Store
	e     *batch.Engine
	runID string
	total int64 // estimated rows of the table (what a pass reads); 0 unknown

	// rate baseline: the pass rows when this process first saw the pass
	pass     int
	baseRows int64
	baseAt   time.Time

	last progressSnapshot
}

type progressSnapshot struct {
	ok                     bool
	pass                   int
	status                 checkpoint.PassStatus
	rate                   float64 // pass rows per second since the baseline
	eta                    time.Duration
	remaining              int64
	haveRemaining, haveETA bool
}

// startProgress reports progress while the run lasts: every progressPoll it
// updates the ranges and rows-remaining gauges (and the bar, when shown);
// every progressEvery it logs rows, rate and ETA. stop makes a last update
// (so that the final push carries final gauges) and clears the bar.
func (a *app) startProgress(ctx context.Context, store *checkpoint.Store, e *batch.Engine) (stop func()) {
	p := &progress{a: a, store: store, e: e, runID: e.Spec().ID()}
	// Pages run on past a cancellation (they finish or roll back), so the
	// reporter watches until stop, not until ctx ends.
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		p.total = estimateRows(pctx, a.pool, a.tableSpec())
		if a.wantBar() && pctx.Err() == nil {
			a.logw.setBar(newBar(a.stderr, p.total))
		}
		p.update(pctx)
		poll := time.NewTicker(progressPoll)
		defer poll.Stop()
		logTick := time.NewTicker(progressEvery)
		defer logTick.Stop()
		for {
			select {
			case <-done:
				fctx, fcancel := context.WithTimeout(context.Background(), 3*time.Second)
				p.update(fctx)
				fcancel()
				return
			case <-poll.C:
				p.update(pctx)
			case <-logTick.C:
				p.logLine()
			}
		}
	}()
	return func() {
		cancel()
		close(done)
		<-finished
		a.logw.setBar(nil)
	}
}

func newBar(w io.Writer, total int64) *progressbar.ProgressBar {
	return progressbar.NewOptions64(max(total, 1),
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription("rotating"),
		progressbar.OptionSetWidth(30),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("rows"),
		progressbar.OptionSetPredictTime(true),
	)
}

// update reads the pass's status and moves the gauges and the bar.
func (p *progress) update(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	run, st, ok, err := p.store.CurrentPass(ctx, p.runID)
	if err != nil {
		p.a.log.DebugContext(ctx, "progress: read pass status", "err", err)
		return // a transient read error: next tick
	}
	if !ok {
		return // the engine has not joined the run yet
	}
	now := time.Now()
	passRows := st.Counts.Rows()
	if run.Pass != p.pass || passRows < p.baseRows {
		p.pass, p.baseRows, p.baseAt = run.Pass, passRows, now // a new pass starts from zero
	}
	s := progressSnapshot{ok: true, pass: run.Pass, status: st}
	if dt := now.Sub(p.baseAt).Seconds(); dt >= 0.5 {
		s.rate = float64(passRows-p.baseRows) / dt
	}
	m := p.a.metrics
	m.Ranges.WithLabelValues("done").Set(float64(st.Done))
	m.Ranges.WithLabelValues("running").Set(float64(st.Running))
	m.Ranges.WithLabelValues("pending").Set(float64(st.Pending))
	if p.total > 0 {
		s.remaining, s.haveRemaining = max(0, p.total-passRows), true
		if st.Complete() {
			s.remaining = 0
		}
		m.RowsRemaining.Set(float64(s.remaining))
		if s.rate > 0 {
			s.eta, s.haveETA = time.Duration(float64(s.remaining)/s.rate*float64(time.Second)), true
		}
	}
	p.last = s
	p.a.logw.withBar(func(bar *progressbar.ProgressBar) {
		if bar == nil {
			return
		}
		if passRows > bar.GetMax64() {
			bar.ChangeMax64(passRows)
		}
		bar.Describe(fmt.Sprintf("pass %d, ranges %d/%d", run.Pass, st.Done, st.Ranges))
		_ = bar.Set64(passRows)
	})
}

// logLine is the periodic progress record: rows, rate and ETA. Until the
// first read of the pass's status there is nothing worth a line (no pass,
// no totals): on a loaded machine that read can take longer than a period.
func (p *progress) logLine() {
	if !p.last.ok {
		return
	}
	proc := p.e.Progress()
	attrs := []any{"run_id", p.runID, "rows", proc.Rows(), "rotated", proc.Rotated, "quarantined", proc.Quarantined}
	s := p.last
	attrs = append(attrs, "pass", s.pass, "pass_rows", s.status.Counts.Rows(), "pass_rotated", s.status.Counts.Rotated,
		"ranges_done", s.status.Done, "ranges", s.status.Ranges, "rows_per_s", int64(s.rate))
	if s.haveRemaining {
		attrs = append(attrs, "rows_remaining_estimate", s.remaining)
	}
	if s.haveETA {
		attrs = append(attrs, "eta_s", int64(s.eta.Seconds()), "eta", human(s.eta))
	}
	if p.a.pacer != nil {
		state, why := p.a.pacer.State()
		attrs = append(attrs, "pace", state)
		if len(why) > 0 {
			attrs = append(attrs, "held_by", why)
		}
	}
	p.a.log.Info("progress", attrs...)
}

// estimateRows is what a pass reads, as the range planner counts it
// (batch.PassRows: an exact count up to batch.ExactMaxRows, the planner's
// estimate above). 0 when neither is available in estimateTimeout.
func estimateRows(ctx context.Context, db batch.DB, spec tokentable.Spec) int64 {
	if db == nil {
		return 0
	}
	ctx, cancel := context.WithTimeout(ctx, estimateTimeout)
	defer cancel()
	t, _ := tokentable.Inspect(ctx, db, spec) // run passed Preflight: only a nullable id is left, and it returns t
	if t == nil {
		return 0
	}
	n, _ := batch.PassRows(ctx, db, t) // a failed count still gives the estimate
	return n
}

// estimateTimeout bounds the progress total's count(*): a bar without a
// total is better than a reporter stuck behind a slow scan.
const estimateTimeout = 15 * time.Second
