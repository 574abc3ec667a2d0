package deploy

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"
)

// The rules are evaluated by the Prometheus query engine itself over series
// held in memory. (promql/promqltest would load them for us, but its test
// storage brings Prometheus's whole configuration package: the Azure, Google
// and Kubernetes client SDKs. The engine alone does not.)

// memStorage is a storage.Queryable over series given in the notation of
// Prometheus's rule unit tests ("metric{l="v"} 0+10x5 _ 3x2"), one sample
// a minute from time 0.
type memStorage struct{ series []*storage.SeriesEntry }

func loadSeries(t *testing.T, text string) *memStorage {
	t.Helper()
	st := &memStorage{}
	for line := range strings.SplitSeq(text, "\n") {
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		lset, values, err := promParser.ParseSeriesDesc(line)
		if err != nil {
			t.Fatalf("series %q: %v", line, err)
		}
		var samples []chunks.Sample
		for i, v := range values {
			if !v.Omitted {
				samples = append(samples, floatSample{t: int64(i) * time.Minute.Milliseconds(), f: v.Value})
			}
		}
		st.series = append(st.series, storage.NewListSeries(lset, samples))
	}
	return st
}

func (m *memStorage) Querier(int64, int64) (storage.Querier, error) {
	return &storage.MockQuerier{SelectMockFunction: func(_ bool, _ *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
		var out []storage.Series
	next:
		for _, s := range m.series {
			for _, matcher := range ms {
				if !matcher.Matches(s.Labels().Get(matcher.Name)) {
					continue next
				}
			}
			out = append(out, s)
		}
		slices.SortFunc(out, func(a, b storage.Series) int { return labels.Compare(a.Labels(), b.Labels()) })
		return &listSeriesSet{series: out, i: -1}
	}}, nil
}

type listSeriesSet struct {
	series []storage.Series
	i      int
}

func (l *listSeriesSet) Next() bool                        { l.i++; return l.i < len(l.series) }
func (l *listSeriesSet) At() storage.Series                { return l.series[l.i] }
func (l *listSeriesSet) Err() error                        { return nil }
func (l *listSeriesSet) Warnings() annotations.Annotations { return nil }

type floatSample struct {
	t int64
	f float64
}

func (s floatSample) T() int64                      { return s.t }
func (s floatSample) ST() int64                     { return 0 }
func (s floatSample) F() float64                    { return s.f }
func (s floatSample) H() *histogram.Histogram       { return nil }
func (s floatSample) FH() *histogram.FloatHistogram { return nil }
func (s floatSample) Type() chunkenc.ValueType      { return chunkenc.ValFloat }
func (s floatSample) Copy() chunks.Sample           { return s }

func newEngine() *promql.Engine {
	return promql.NewEngine(promql.EngineOpts{MaxSamples: 1_000_000, Timeout: time.Minute, LookbackDelta: 5 * time.Minute})
}

// ruleExpr is the expression of the alert or recording rule called name.
func ruleExpr(t *testing.T, r *prometheusRule, name string) (expr string, forDur time.Duration) {
	t.Helper()
	for _, g := range r.Spec.Groups {
		for _, rl := range g.Rules {
			if rl.Alert == name || rl.Record == name {
				if rl.For != "" {
					d, err := time.ParseDuration(rl.For)
					if err != nil {
						t.Fatalf("%s: for %q: %v", name, rl.For, err)
					}
					forDur = d
				}
				return rl.Expr, forDur
			}
		}
	}
	t.Fatalf("no rule %s in %s", name, rulesFile)
	return "", 0
}

// evalAt evaluates expr at the offset at from the first loaded sample, as
// Prometheus's rule manager does at each evaluation.
func evalAt(t *testing.T, eng *promql.Engine, st storage.Queryable, expr string, at time.Duration) promql.Vector {
	t.Helper()
	ctx := context.Background()
	q, err := eng.NewInstantQuery(ctx, st, nil, expr, time.Unix(0, 0).Add(at))
	if err != nil {
		t.Fatalf("query %s: %v", expr, err)
	}
	defer q.Close()
	res := q.Exec(ctx)
	if res.Err != nil {
		t.Fatalf("eval %s at %s: %v", expr, at, res.Err)
	}
	v, err := res.Vector()
	if err != nil {
		t.Fatalf("eval %s at %s: %v", expr, at, err)
	}
	return v
}

// firing reports whether the alert fires at `at`: its expression returns
// something at every evaluation (each minute) of its `for` window.
func firing(t *testing.T, eng *promql.Engine, st storage.Queryable, expr string, forDur, at time.Duration) promql.Vector {
	t.Helper()
	var v promql.Vector
	for back := forDur; back >= 0; back -= time.Minute {
		v = evalAt(t, eng, st, expr, at-back)
		if len(v) == 0 {
			return nil
		}
	}
	return v
}

// The alerts fire in the situations issue 12 names and stay quiet in their
// look-alikes, evaluated by the Prometheus engine on series shaped like the
// binary's (minute samples from two pods of one Job; `namespace` and `pod`
// as the PodMonitor adds them).
func TestAlertsFire(t *testing.T) {
	r := loadRules(t)
	eng := newEngine()

	// Two pods; rotated rows rise for the first 10 minutes, then stop.
	const progressThenFlat = `
  reencrypt_rows_total{namespace="ns",pod="p0",outcome="rotated"} 0+100x10 1000x30
  reencrypt_rows_total{namespace="ns",pod="p1",outcome="rotated"} 0+100x10 1000x30
  reencrypt_rows_total{namespace="ns",pod="p0",outcome="quarantined"} 0x40
  reencrypt_rows_total{namespace="ns",pod="p1",outcome="quarantined"} 0x40
  reencrypt_held{namespace="ns",pod="p0",reason="paused"} 0x40
  reencrypt_held{namespace="ns",pod="p1",reason="paused"} 0x40
`
	const rangesLeft = `
  reencrypt_ranges{namespace="ns",pod="p0",state="pending"} 3x40
  reencrypt_ranges{namespace="ns",pod="p0",state="running"} 2x40
  reencrypt_ranges{namespace="ns",pod="p1",state="pending"} 3x40
  reencrypt_ranges{namespace="ns",pod="p1",state="running"} 2x40
`
	// 100 requests a minute per pod, of which throttledPerMin throttled.
	kms := func(throttledPerMin int) string {
		return fmt.Sprintf(`
  reencrypt_kms_requests_total{namespace="ns",pod="p0",operation="Decrypt",result="ok"} 0+%[1]dx40
  reencrypt_kms_requests_total{namespace="ns",pod="p0",operation="Decrypt",result="throttled"} 0+%[2]dx40
  reencrypt_kms_requests_total{namespace="ns",pod="p1",operation="Decrypt",result="ok"} 0+%[1]dx40
  reencrypt_kms_requests_total{namespace="ns",pod="p1",operation="Decrypt",result="throttled"} 0+%[2]dx40
`, 100-throttledPerMin, throttledPerMin)
	}

	// No throttling until 16 minutes, then a third of the requests.
	const throttlingFrom16m = `
  reencrypt_kms_requests_total{namespace="ns",pod="p0",operation="Decrypt",result="ok"} 0+100x40
  reencrypt_kms_requests_total{namespace="ns",pod="p0",operation="Decrypt",result="throttled"} 0x15 0+50x25
`

	cases := []struct {
		name  string
		alert string
		load  string
		at    time.Duration
		fires bool
	}{
		{"stalled: no rotation for 10 minutes, ranges left", "ReencryptStalled", progressThenFlat + rangesLeft, 21 * time.Minute, true},
		{"stalled: rotation 8 minutes ago", "ReencryptStalled", progressThenFlat + rangesLeft, 18 * time.Minute, false},
		{"stalled: nothing left to do", "ReencryptStalled", progressThenFlat + `
  reencrypt_ranges{namespace="ns",pod="p0",state="pending"} 0x40
  reencrypt_ranges{namespace="ns",pod="p0",state="running"} 0x40
`, 25 * time.Minute, false},
		{"stalled: paused by an operator", "ReencryptStalled", rangesLeft + `
  reencrypt_rows_total{namespace="ns",pod="p0",outcome="rotated"} 0+100x10 1000x30
  reencrypt_held{namespace="ns",pod="p0",reason="paused"} 0x10 1x30
`, 25 * time.Minute, false},
		{"stalled: pods started 5 minutes ago, no page yet", "ReencryptStalled", rangesLeft + `
  reencrypt_rows_total{namespace="ns",pod="p0",outcome="rotated"} _x30 0x10
  reencrypt_held{namespace="ns",pod="p0",reason="paused"} _x30 0x10
`, 35 * time.Minute, false},
		{"stalled: a restarted pod rotates from 0 again", "ReencryptStalled", rangesLeft + `
  reencrypt_rows_total{namespace="ns",pod="p0",outcome="rotated"} 0+100x20 _x20
  reencrypt_rows_total{namespace="ns",pod="p2",outcome="rotated"} _x20 0+50x20
`, 35 * time.Minute, false},

		{"quarantine: rows quarantined", "ReencryptQuarantine", progressThenFlat + `
  reencrypt_rows_total{namespace="ns",pod="p2",outcome="quarantined"} 0x10 3x30
`, 15 * time.Minute, true},
		{"quarantine: none", "ReencryptQuarantine", progressThenFlat, 15 * time.Minute, false},

		{"throttling: 6 % for 5 minutes", "ReencryptKMSThrottling", kms(6), 20 * time.Minute, true},
		{"throttling: 4 %", "ReencryptKMSThrottling", kms(4), 20 * time.Minute, false},
		{"throttling: a third for 2 minutes only", "ReencryptKMSThrottling", throttlingFrom16m, 18 * time.Minute, false},
		{"throttling: a third for 6 minutes", "ReencryptKMSThrottling", throttlingFrom16m, 22 * time.Minute, true},

		{"errors: a new error series", "ReencryptKMSErrors", kms(6) + `
  reencrypt_kms_requests_total{namespace="ns",pod="p0",operation="Decrypt",result="AccessDeniedException"} _x20 1x20
`, 22 * time.Minute, true},
		{"errors: errors growing", "ReencryptKMSErrors", kms(6) + `
  reencrypt_kms_requests_total{namespace="ns",pod="p0",operation="GenerateDataKey",result="transport"} 0+1x40
`, 30 * time.Minute, true},
		{"errors: an old error, none since", "ReencryptKMSErrors", kms(6) + `
  reencrypt_kms_requests_total{namespace="ns",pod="p0",operation="Decrypt",result="AccessDeniedException"} _x10 1x30
`, 30 * time.Minute, false},
		{"errors: throttling only", "ReencryptKMSErrors", kms(50), 30 * time.Minute, false},

		{"fenced: a refused commit", "ReencryptFencedCommits", `
  reencrypt_fenced_commits_total{namespace="ns",pod="p0"} 0x10 1x30
`, 12 * time.Minute, true},
		{"fenced: none for 15 minutes", "ReencryptFencedCommits", `
  reencrypt_fenced_commits_total{namespace="ns",pod="p0"} 0x10 1x30
`, 30 * time.Minute, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := loadSeries(t, c.load)
			expr, forDur := ruleExpr(t, r, c.alert)
			v := firing(t, eng, st, expr, forDur, c.at)
			if (len(v) > 0) != c.fires {
				t.Errorf("%s at %s: result %v, want firing = %v", c.alert, c.at, v, c.fires)
			}
			for _, s := range v {
				if s.Metric.Get("namespace") != "ns" {
					t.Errorf("%s fired without its namespace label: %v", c.alert, s.Metric)
				}
			}
		})
	}
}

// The recording rules give the runbook's names the values it expects.
func TestRecordingRules(t *testing.T) {
	r := loadRules(t)
	eng := newEngine()
	st := loadSeries(t, `
  reencrypt_kms_request_duration_seconds_bucket{namespace="ns",pod="p0",operation="Decrypt",le="0.01"} 0+60x20
  reencrypt_kms_request_duration_seconds_bucket{namespace="ns",pod="p0",operation="Decrypt",le="0.1"} 0+100x20
  reencrypt_kms_request_duration_seconds_bucket{namespace="ns",pod="p0",operation="Decrypt",le="+Inf"} 0+100x20
  reencrypt_kms_request_duration_seconds_bucket{namespace="ns",pod="p0",operation="GenerateDataKey",le="0.01"} 0x20
  reencrypt_kms_request_duration_seconds_bucket{namespace="ns",pod="p0",operation="GenerateDataKey",le="0.1"} 0x20
  reencrypt_kms_request_duration_seconds_bucket{namespace="ns",pod="p0",operation="GenerateDataKey",le="+Inf"} 0+100x20
  reencrypt_kms_requests_total{namespace="ns",pod="p0",operation="GenerateDataKey",result="ok"} 0+100x20
  reencrypt_kms_requests_total{namespace="ns",pod="p0",operation="GenerateDataKey",result="throttled"} 0+6x20
  reencrypt_kms_requests_total{namespace="ns",pod="p1",operation="GenerateDataKey",result="throttled"} 0+6x20
  reencrypt_kms_requests_total{namespace="ns",pod="p0",operation="Decrypt",result="throttled"} 0+60x20
  reencrypt_kms_requests_total{namespace="ns",pod="p0",operation="Decrypt",result="AccessDeniedException"} 0+60x20
`)
	at := 15 * time.Minute

	// Decrypt only: 60 % of attempts under 10 ms, the rest under 100 ms.
	var quantiles []string
	for _, rl := range slices.Concat(groupRules(r)...) {
		if rl.Record != "kms_decrypt_latency" {
			continue
		}
		q := rl.Labels["quantile"]
		quantiles = append(quantiles, q)
		v := evalAt(t, eng, st, rl.Expr, at)
		if len(v) != 1 || v[0].Metric.Get("namespace") != "ns" {
			t.Fatalf("kms_decrypt_latency{quantile=%q}: %v, want one series for namespace ns", q, v)
		}
		want := map[string]float64{"0.5": 0.01 * 0.5 / 0.6, "0.99": 0.01 + 0.09*(0.99-0.6)/0.4}[q]
		if got := v[0].F; want == 0 || got < want*0.99 || got > want*1.01 {
			t.Errorf("kms_decrypt_latency{quantile=%q} = %v s, want %v s", q, got, want)
		}
	}
	if slices.Sort(quantiles); !slices.Equal(quantiles, []string{"0.5", "0.99"}) {
		t.Errorf("kms_decrypt_latency quantiles %v, want 0.99 and 0.5", quantiles)
	}

	// Encrypt-side errors only, throttling included, per second, summed
	// over the pods: GenerateDataKey throttled 12 a minute.
	expr, _ := ruleExpr(t, r, "kms_encrypt_errors")
	v := evalAt(t, eng, st, expr, at)
	if len(v) != 1 || v[0].Metric.Get("operation") != "GenerateDataKey" || v[0].Metric.Get("result") != "throttled" ||
		v[0].F < 0.199 || v[0].F > 0.201 {
		t.Errorf("kms_encrypt_errors = %v, want one series GenerateDataKey throttled at 0.2/s", v)
	}
}

func groupRules(r *prometheusRule) [][]rule {
	var out [][]rule
	for _, g := range r.Spec.Groups {
		out = append(out, g.Rules)
	}
	return out
}
