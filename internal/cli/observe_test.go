package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/config"
)

// pushRecorder stands in for a Pushgateway: it records every request.
type pushRecorder struct {
	mu   sync.Mutex
	reqs []pushRequest
}

type pushRequest struct {
	method, path string
	header       http.Header
	body         []byte
}

func newPushgateway(t *testing.T) (*pushRecorder, string) {
	p := &pushRecorder{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		p.mu.Lock()
		p.reqs = append(p.reqs, pushRequest{method: r.Method, path: r.URL.Path, header: r.Header.Clone(), body: body})
		p.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	return p, srv.URL
}

func (p *pushRecorder) requests() []pushRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]pushRequest(nil), p.reqs...)
}

// families decodes a pushed body in whatever format the client chose.
func (r pushRequest) families(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	dec := expfmt.NewDecoder(bytes.NewReader(r.body), expfmt.ResponseFormat(r.header))
	out := map[string]*dto.MetricFamily{}
	for {
		mf := &dto.MetricFamily{}
		if err := dec.Decode(mf); err != nil {
			if errors.Is(err, io.EOF) {
				return out
			}
			t.Fatalf("decode pushed metrics: %v", err)
		}
		out[mf.GetName()] = mf
	}
}

// scrape reads /metrics in the text format.
func scrape(t *testing.T, addr string) ([]byte, map[string]*dto.MetricFamily) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse scrape: %v\n%s", err, body)
	}
	return body, mfs
}

// value is the value of the sample of family name whose labels include
// every one of labels ("k=v").
func value(mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	mf, ok := mfs[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

// waitLog waits for a JSON log record with this msg on a running command's
// stderr and returns it.
func waitLog(t *testing.T, stderr *testbed.SyncBuffer, msg string, done <-chan opResult) map[string]any {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, rec := range opLogs(stderr.String()) {
			if rec["msg"] == msg {
				return rec
			}
		}
		select {
		case r := <-done:
			t.Fatalf("command ended before logging %q:\n%s", msg, r)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("no %q log record in 30s:\n%s", msg, stderr.String())
	return nil
}

var uuidLike = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)

// TestMetricsDuringRunAndPush: /metrics shows the row counter rising while a
// run of a few thousand rows is in progress, status sees the run live, the
// metrics follow the Prometheus conventions and carry no row id, and the
// final push reaches the Pushgateway grouped by job and shard, with the
// final numbers.
func TestMetricsDuringRunAndPush(t *testing.T) {
	old := progressPoll
	progressPoll = 100 * time.Millisecond
	t.Cleanup(func() { progressPoll = old })
	o := newOpEnv(t, "uuid")
	ids := o.Seed(2000, o.Old, 1)
	gw, gwURL := newPushgateway(t)

	stderr := &testbed.SyncBuffer{}
	done := make(chan opResult, 1)
	go func() {
		done <- o.cmdCtx(context.Background(), []string{"run"}, stderr, "METRICS_ADDR=127.0.0.1:0",
			"PUSHGATEWAY_URL="+gwURL, "SHARD_COUNT=3", "SHARD_INDEX=2", "BATCH_SIZE=20", "KMS_RATE_LIMIT=1200")
	}()
	addr := waitLog(t, stderr, "serving metrics", done)["addr"].(string)

	var first float64
	testbed.WaitFor(t, "reencrypt_rows_total{outcome=rotated} above 0", 30*time.Second, func() bool {
		_, mfs := scrape(t, addr)
		if _, ok := value(mfs, "reencrypt_ranges", "state=done"); ok { // the reporter has read the pass
			first, _ = value(mfs, "reencrypt_rows_total", "outcome=rotated")
		}
		return first != 0
	})
	// Scrape again until the count moves: a wait on the condition, not a
	// fixed pause that a loaded machine can outlast or the run outrun.
	var body []byte
	var mfs map[string]*dto.MetricFamily
	// The remaining-rows gauge is refreshed on its own tick, after the
	// counters: wait for both to show the run under way.
	var second float64
	testbed.Poll(30*time.Second, func() bool {
		body, mfs = scrape(t, addr)
		second, _ = value(mfs, "reencrypt_rows_total", "outcome=rotated")
		rem, _ := value(mfs, "reencrypt_rows_remaining")
		return second != first && rem > 0 && rem < 2000
	})
	if second <= first || second >= 2000 {
		t.Fatalf("rows rotated did not move during the run: first scrape %v, second %v (of 2000)", first, second)
	}
	for _, want := range []struct {
		name   string
		labels []string
	}{
		{"reencrypt_kms_requests_total", []string{"operation=Decrypt", "result=ok"}},
		{"reencrypt_kms_requests_total", []string{"operation=GenerateDataKey", "result=ok"}},
		{"reencrypt_kms_request_duration_seconds", []string{"operation=Decrypt"}},
		{"reencrypt_page_duration_seconds", nil},
		{"reencrypt_last_success_timestamp_seconds", nil},
		{"reencrypt_rows_remaining", nil},
		{"reencrypt_ranges", []string{"state=done"}},
		{"reencrypt_ranges", []string{"state=pending"}},
	} {
		if _, ok := value(mfs, want.name, want.labels...); !ok {
			t.Errorf("scrape during the run lacks %s%v", want.name, want.labels)
		}
	}
	if rem, _ := value(mfs, "reencrypt_rows_remaining"); rem <= 0 || rem >= 2000 {
		t.Errorf("rows remaining during the run: %v, want between 0 and 2000", rem)
	}
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "reencrypt_") {
			t.Errorf("metric %s: %s", p.Metric, p.Text)
		}
	}

	// status sees the run live.
	r := o.cmd([]string{"status", "--json", "--no-scan"})
	o.mustCode(r, exitOK)
	if rs := opDecode[statusReport](t, r).Runs; len(rs) != 1 || rs[0].State != "running" || rs[0].Ranges.LiveLeases == 0 {
		t.Errorf("status during the run: %+v, want one running run", rs)
	}

	res := <-done
	o.mustCode(res, exitOK)

	var pushed []pushRequest
	for _, p := range gw.requests() {
		if p.path == "/metrics/job/reencrypt/shard/2" && (p.method == http.MethodPut || p.method == http.MethodPost) {
			pushed = append(pushed, p)
		}
	}
	if len(pushed) != 1 {
		t.Fatalf("got %d pushes to /metrics/job/reencrypt/shard/2 (all requests: %d), want 1", len(pushed), len(gw.requests()))
	}
	fams := pushed[0].families(t)
	final := map[string]float64{}
	for _, c := range []struct{ key, name, label string }{
		{"rotated", "reencrypt_rows_total", "outcome=rotated"},
		{"remaining", "reencrypt_rows_remaining", ""},
		{"done", "reencrypt_ranges", "state=done"},
		{"running", "reencrypt_ranges", "state=running"},
		{"last", "reencrypt_last_success_timestamp_seconds", ""},
	} {
		var labels []string
		if c.label != "" {
			labels = []string{c.label}
		}
		v, ok := value(fams, c.name, labels...)
		if !ok {
			t.Errorf("pushed metrics lack %s %s", c.name, c.label)
		}
		final[c.key] = v
	}
	if final["rotated"] != 2000 || final["remaining"] != 0 || final["done"] != 8 || final["running"] != 0 ||
		final["last"] < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("pushed final metrics: %v, want 2000 rotated, 0 remaining, 8 ranges done, a recent last success", final)
	}
	// No row id (nor anything shaped like a uuid) in any label.
	seeded := map[string]bool{}
	for _, id := range ids {
		seeded[id] = true
	}
	for _, mf := range fams {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if seeded[l.GetValue()] || uuidLike.MatchString(l.GetValue()) {
					t.Errorf("metric %s has a row id in label %s=%s", mf.GetName(), l.GetName(), l.GetValue())
				}
			}
		}
	}
}

// TestProgressReporting: off a terminal (PROGRESS=auto, stderr a buffer) a
// run logs periodic progress lines with rows, rate and ETA and draws no bar;
// PROGRESS=on draws the bar on stderr anyway, keeping log lines whole.
func TestProgressReporting(t *testing.T) {
	oldEvery, oldPoll := progressEvery, progressPoll
	progressEvery, progressPoll = 150*time.Millisecond, 100*time.Millisecond
	t.Cleanup(func() { progressEvery, progressPoll = oldEvery, oldPoll })

	o := newOpEnv(t, "uuid")
	o.Seed(600, o.Old, 1)
	slow := []string{"BATCH_SIZE=20", "KMS_RATE_LIMIT=400"}

	r := o.cmd([]string{"run"}, append(slow, "PROGRESS=auto")...)
	o.mustCode(r, exitOK)
	var lines []map[string]any
	for _, rec := range opLogs(r.stderr) {
		if rec["msg"] == "progress" {
			lines = append(lines, rec)
		}
	}
	if len(lines) < 2 {
		t.Fatalf("got %d progress log lines, want several:\n%s", len(lines), r.stderr)
	}
	var withETA bool
	for _, l := range lines {
		for _, k := range []string{"run_id", "rows", "rotated", "pass_rows", "rows_per_s", "ranges_done"} {
			if _, ok := l[k]; !ok {
				t.Errorf("progress line lacks %q: %v", k, l)
			}
		}
		if _, ok := l["eta_s"]; ok {
			withETA = true
		}
	}
	if !withETA {
		t.Errorf("no progress line has an ETA: %v", lines)
	}
	if strings.Contains(r.stderr, "\r") || strings.Contains(r.stderr, "pass 1, ranges") {
		t.Errorf("a progress bar was drawn off a terminal:\n%q", r.stderr)
	}
	for _, need := range []string{"reencrypt run starting", "preflight passed", "run joined", "range claimed", "range finished", "reencrypt run finished"} {
		found := false
		for _, rec := range opLogs(r.stderr) {
			found = found || rec["msg"] == need
		}
		if !found {
			t.Errorf("no %q log record", need)
		}
	}

	// Rotate back (the rollback) with the bar forced on.
	r = o.cmd([]string{"run"}, append(slow, "PROGRESS=on", "OLD_KEY_ID="+o.New.Ref, "NEW_KEY_ID="+o.Old.Ref)...)
	o.mustCode(r, exitOK)
	if !strings.Contains(r.stderr, "\r") || !strings.Contains(r.stderr, "pass 1, ranges") || !strings.Contains(r.stderr, "rows") {
		t.Errorf("PROGRESS=on drew no bar:\n%q", r.stderr)
	}
	// Every log record still parses: the bar never splits one.
	n := 0
	for _, line := range strings.Split(r.stderr, "\n") {
		if i := strings.Index(line, `{"time"`); i >= 0 {
			n++
			if !strings.HasSuffix(line, "}") {
				t.Errorf("a log line was mangled by the bar: %q", line)
			}
		}
	}
	if n != len(opLogs(r.stderr)) || n == 0 {
		t.Errorf("%d log lines, %d parse", n, len(opLogs(r.stderr)))
	}
}

// TestPushFailureHidesCredentials: a Pushgateway URL with basic-auth
// credentials is not echoed with its password when the push fails.
func TestPushFailureHidesCredentials(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "nope", http.StatusInternalServerError)
	}))
	t.Cleanup(srv.Close)
	u := strings.Replace(srv.URL, "http://", "http://pusher:s3cr%2Ft-pw@", 1)
	var stderr bytes.Buffer
	a := &app{cfg: &config.Config{PushgatewayURL: u}, reg: prometheus.NewRegistry()}
	a.log = newLogger(&stderr, "info", false)
	a.pushMetrics()
	if !strings.Contains(stderr.String(), "push metrics to the Pushgateway failed") {
		t.Fatalf("the failed push is not logged:\n%s", stderr.String())
	}
	for _, pw := range []string{"s3cr/t-pw", "s3cr%2Ft-pw", "s3cr%2Ft"} {
		if strings.Contains(stderr.String(), pw) {
			t.Errorf("the log shows the password (%q):\n%s", pw, stderr.String())
		}
	}
}
