package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/internal/kmsfault"
	"github.com/reencrypt/reencrypt/internal/testbed"
)

const (
	rulesFile     = "monitoring/prometheusrule.yaml"
	dashboardFile = "monitoring/reencrypt-dashboard.json"
	runbookFile   = "../docs/runbook.md"
	runbookURL    = "https://github.com/reencrypt/reencrypt/blob/main/docs/runbook.md"
)

// The alerts issue 12 asks for, and the names the key-rotation runbook's
// panels use, which recording rules must provide.
var (
	wantAlerts  = []string{"ReencryptFencedCommits", "ReencryptKMSErrors", "ReencryptKMSThrottling", "ReencryptQuarantine", "ReencryptStalled"}
	wantRecords = []string{"kms_decrypt_latency", "kms_encrypt_errors"}
)

func loadRules(t *testing.T) *prometheusRule {
	t.Helper()
	data, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	o, err := decodeObjects(data)
	if err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	if o.rule == nil || o.job != nil || o.sa != nil || o.cm != nil || o.np != nil || o.pm != nil {
		t.Fatalf("%s: want exactly one PrometheusRule", rulesFile)
	}
	return o.rule
}

// dashboard is the part of Grafana's dashboard JSON model the checks read;
// everything else in the file is left to Grafana.
type dashboard struct {
	UID        string                        `json:"uid"`
	Title      string                        `json:"title"`
	Panels     []dashPanel                   `json:"panels"`
	Templating struct{ List []dashVariable } `json:"templating"`
}

type dashPanel struct {
	ID          int                      `json:"id"`
	Type        string                   `json:"type"`
	Title       string                   `json:"title"`
	Description string                   `json:"description"`
	Datasource  *dashDS                  `json:"datasource"`
	GridPos     struct{ H, W, X, Y int } `json:"gridPos"`
	Targets     []struct {
		RefID      string  `json:"refId"`
		Expr       string  `json:"expr"`
		Datasource *dashDS `json:"datasource"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"` // a collapsed row keeps its panels here
}

type dashDS struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type dashVariable struct {
	Type       string          `json:"type"`
	Name       string          `json:"name"`
	Query      json.RawMessage `json:"query"`
	Datasource *dashDS         `json:"datasource"`
}

func loadDashboard(t *testing.T) *dashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return &d
}

// allPanels flattens rows and the panels of collapsed rows.
func (d *dashboard) allPanels() []dashPanel {
	var out []dashPanel
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// query is one PromQL expression of the monitoring files and where it is.
type query struct {
	where string
	expr  parser.Expr
}

var promParser = parser.NewParser(parser.Options{})

// grafanaVar matches a Grafana variable in a query: $name, ${name} or
// ${name:format}.
var grafanaVar = regexp.MustCompile(`\$\{(\w+)(?::\w+)?\}|\$(\w+)`)

// expandGrafana replaces the dashboard's variables and Grafana's interval
// variables with sample values, so that the parser sees what Prometheus
// will; a variable the dashboard does not define is an error.
func expandGrafana(expr string, defined []string) (string, error) {
	var unknown []string
	out := grafanaVar.ReplaceAllStringFunc(expr, func(m string) string {
		sub := grafanaVar.FindStringSubmatch(m)
		name := sub[1] + sub[2]
		switch {
		case name == "__rate_interval" || name == "__interval" || name == "__range":
			return "5m"
		case slices.Contains(defined, name):
			return "sample"
		}
		unknown = append(unknown, m)
		return m
	})
	if len(unknown) > 0 {
		return "", fmt.Errorf("undefined variables %v", unknown)
	}
	return out, nil
}

// labelValues matches Grafana's label_values([selector,] label) variable query.
var labelValues = regexp.MustCompile(`^label_values\((?:(.+),\s*)?(\w+)\)$`)

// dashboardQueries parses every target of every panel, and the series
// selectors of the query variables.
func dashboardQueries(d *dashboard) ([]query, error) {
	var defined []string
	for _, v := range d.Templating.List {
		defined = append(defined, v.Name)
	}
	var out []query
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q string
		if err := json.Unmarshal(v.Query, &q); err != nil {
			var obj struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				return nil, fmt.Errorf("variable %s: query %s: %w", v.Name, v.Query, err)
			}
			q = obj.Query
		}
		m := labelValues.FindStringSubmatch(strings.TrimSpace(q))
		if m == nil || m[1] == "" {
			return nil, fmt.Errorf("variable %s: query %q, want label_values(<series selector>, <label>)", v.Name, q)
		}
		sel, err := expandGrafana(m[1], defined)
		if err == nil {
			var e parser.Expr
			if e, err = promParser.ParseExpr(sel); err == nil {
				out = append(out, query{"variable " + v.Name, e})
				continue
			}
		}
		return nil, fmt.Errorf("variable %s: %q: %w", v.Name, q, err)
	}
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			where := fmt.Sprintf("panel %q target %s", p.Title, tg.RefID)
			s, err := expandGrafana(tg.Expr, defined)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			e, err := promParser.ParseExpr(s)
			if err != nil {
				return nil, fmt.Errorf("%s: %q: %w", where, tg.Expr, err)
			}
			out = append(out, query{where, e})
		}
	}
	return out, nil
}

// ruleQueries parses every rule's expression and returns the names the
// recording rules record.
func ruleQueries(r *prometheusRule) (qs []query, recorded []string, err error) {
	for _, g := range r.Spec.Groups {
		for i, rl := range g.Rules {
			where := fmt.Sprintf("group %s rule %d (%s%s)", g.Name, i, rl.Alert, rl.Record)
			e, err := promParser.ParseExpr(rl.Expr)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", where, err)
			}
			qs = append(qs, query{where, e})
			if rl.Record != "" {
				recorded = append(recorded, rl.Record)
			}
		}
	}
	return qs, recorded, nil
}

// selector is one series selector of a query: a metric name and its label
// matchers (the name's own matcher left out).
type selector struct {
	where    string
	name     string
	matchers []*labels.Matcher
}

func selectors(qs []query) []selector {
	var out []selector
	for _, q := range qs {
		parser.Inspect(q.expr, func(n parser.Node, _ []parser.Node) error {
			vs, ok := n.(*parser.VectorSelector)
			if !ok {
				return nil
			}
			s := selector{where: q.where, name: vs.Name}
			for _, m := range vs.LabelMatchers {
				if m.Name == model.MetricNameLabel {
					if m.Type == labels.MatchEqual {
						s.name = m.Value
					}
					continue
				}
				s.matchers = append(s.matchers, m)
			}
			out = append(out, s)
			return nil
		})
	}
	return out
}

// exported is what scrapes of the binary's /metrics showed: each metric
// family's type and, per label, the values seen.
type exported map[string]*exportedFamily

type exportedFamily struct {
	typ    dto.MetricType
	labels map[string]map[string]bool
}

func (e exported) add(mfs map[string]*dto.MetricFamily) {
	for name, mf := range mfs {
		f := e[name]
		if f == nil {
			f = &exportedFamily{typ: mf.GetType(), labels: map[string]map[string]bool{}}
			e[name] = f
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if f.labels[l.GetName()] == nil {
					f.labels[l.GetName()] = map[string]bool{}
				}
				f.labels[l.GetName()][l.GetValue()] = true
			}
		}
	}
}

// family is the exported family a series name belongs to: a counter's or
// gauge's own name, or a histogram's _bucket, _sum or _count series (its bare
// name selects nothing). extra are the labels the series adds (le).
func (e exported) family(name string) (f *exportedFamily, extra []string) {
	if f := e[name]; f != nil && f.typ != dto.MetricType_HISTOGRAM && f.typ != dto.MetricType_SUMMARY {
		return f, nil
	}
	for suffix, extra := range map[string][]string{"_bucket": {"le"}, "_sum": nil, "_count": nil} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if f := e[base]; f != nil && f.typ == dto.MetricType_HISTOGRAM {
				return f, extra
			}
		}
	}
	return nil, nil
}

// Labels Prometheus adds to every series scraped through the PodMonitor.
var targetLabels = []string{"namespace", "pod", "container", "endpoint", "job", "instance"}

// Label values the binary may export that a short run does not show: the
// KMS operations and AWS error codes are CamelCase, plus the engine's own
// result classes (pkg/kmsclient Observer).
var (
	camelCase     = regexp.MustCompile(`^[A-Z][A-Za-z0-9]+$`)
	resultClasses = []string{"ok", "throttled", "transport"}
	alternatives  = regexp.MustCompile(`^\w+(\|\w+)*$`)
)

// valueKnown reports whether a label value is one the binary exports: seen
// in the scrapes, or for operation and result of the shape the engine uses.
// Other labels of the engine (outcome, state, reason) have fixed value sets,
// all exported from the start: they must have been seen.
func valueKnown(f *exportedFamily, label, value string) bool {
	switch {
	case f.labels[label][value]:
		return true
	case label == "operation":
		return camelCase.MatchString(value)
	case label == "result":
		return slices.Contains(resultClasses, value) || camelCase.MatchString(value)
	}
	return false
}

// problems says what is wrong with each selector: a metric the binary does
// not export (recorded names aside), a label it does not carry, or a value
// it never gives that label.
func (e exported) problems(sels []selector, recorded []string) []string {
	var out []string
	for _, s := range sels {
		if s.name == "" {
			out = append(out, fmt.Sprintf("%s: a selector without a metric name", s.where))
			continue
		}
		if slices.Contains(recorded, s.name) {
			continue
		}
		f, extra := e.family(s.name)
		if f == nil {
			out = append(out, fmt.Sprintf("%s: metric %s is not exported by the binary", s.where, s.name))
			continue
		}
		for _, m := range s.matchers {
			switch {
			case slices.Contains(targetLabels, m.Name) || slices.Contains(extra, m.Name):
				continue
			case f.labels[m.Name] == nil:
				out = append(out, fmt.Sprintf("%s: %s has no label %q (it has %v)", s.where, s.name, m.Name, slices.Sorted(maps.Keys(f.labels))))
				continue
			}
			values := []string{m.Value}
			if m.Type == labels.MatchRegexp || m.Type == labels.MatchNotRegexp {
				if !alternatives.MatchString(m.Value) {
					continue // a real regular expression: not checked
				}
				values = strings.Split(m.Value, "|")
			}
			for _, v := range values {
				if !valueKnown(f, m.Name, v) {
					out = append(out, fmt.Sprintf("%s: %s{%s} never has the value %q (seen: %v)", s.where, s.name, m.Name, v,
						slices.Sorted(maps.Keys(f.labels[m.Name]))))
				}
			}
		}
	}
	return out
}

// allSelectors parses the rules and the dashboard.
func allSelectors(t *testing.T) ([]selector, []string) {
	t.Helper()
	rq, recorded, err := ruleQueries(loadRules(t))
	if err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	dq, err := dashboardQueries(loadDashboard(t))
	if err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return selectors(append(rq, dq...)), recorded
}

// The rules are well formed: each is a recording rule or an alert; the
// alerts and the runbook's names issue 12 asks for are all there; every
// alert has a severity, a summary, a description and a runbook link to a
// section that exists.
func TestPrometheusRules(t *testing.T) {
	r := loadRules(t)
	runbook, err := os.ReadFile(runbookFile)
	if err != nil {
		t.Fatal(err)
	}
	anchors := headingAnchors(string(runbook))
	metricName := regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)

	var alerts, records []string
	groups := map[string]bool{}
	for _, g := range r.Spec.Groups {
		if g.Name == "" || groups[g.Name] {
			t.Errorf("group name %q empty or repeated", g.Name)
		}
		groups[g.Name] = true
		if len(g.Rules) == 0 {
			t.Errorf("group %s has no rules", g.Name)
		}
		for i, rl := range g.Rules {
			where := fmt.Sprintf("group %s rule %d", g.Name, i)
			if (rl.Alert == "") == (rl.Record == "") {
				t.Errorf("%s: want exactly one of alert and record", where)
				continue
			}
			if _, err := promParser.ParseExpr(rl.Expr); err != nil {
				t.Errorf("%s: %v", where, err)
			}
			for _, d := range []string{rl.For, rl.KeepFiringFor} {
				if _, err := model.ParseDuration(d); d != "" && err != nil {
					t.Errorf("%s: duration %q: %v", where, d, err)
				}
			}
			if rl.Record != "" {
				if !metricName.MatchString(rl.Record) {
					t.Errorf("%s: record %q is not a metric name", where, rl.Record)
				}
				if rl.For != "" || len(rl.Annotations) > 0 {
					t.Errorf("%s: a recording rule with for or annotations", where)
				}
				if !slices.Contains(records, rl.Record) {
					records = append(records, rl.Record)
				}
				continue
			}
			if slices.Contains(alerts, rl.Alert) {
				t.Errorf("%s: alert %s defined twice", where, rl.Alert)
			}
			alerts = append(alerts, rl.Alert)
			if s := rl.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("alert %s: severity %q, want critical or warning", rl.Alert, s)
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if strings.TrimSpace(rl.Annotations[a]) == "" {
					t.Errorf("alert %s: annotation %s missing", rl.Alert, a)
				}
			}
			url, anchor, _ := strings.Cut(rl.Annotations["runbook_url"], "#")
			if url != runbookURL || !anchors[anchor] {
				t.Errorf("alert %s: runbook_url %q, want %s#<a heading of docs/runbook.md>", rl.Alert, rl.Annotations["runbook_url"], runbookURL)
			}
		}
	}
	slices.Sort(alerts)
	slices.Sort(records)
	if !slices.Equal(alerts, wantAlerts) {
		t.Errorf("alerts %v, want %v", alerts, wantAlerts)
	}
	if !slices.Equal(records, wantRecords) {
		t.Errorf("recorded names %v, want the runbook's %v", records, wantRecords)
	}
	for _, g := range r.Spec.Groups {
		for _, rl := range g.Rules {
			if rl.Alert == "ReencryptKMSThrottling" && rl.For != "5m" {
				t.Errorf("ReencryptKMSThrottling for %q, want 5m (throttling above 5 %% for 5 minutes)", rl.For)
			}
		}
	}
}

// headingAnchors returns the fragment GitHub gives each Markdown heading:
// lower case, punctuation but - and _ dropped, spaces made dashes.
func headingAnchors(md string) map[string]bool {
	out := map[string]bool{}
	drop := regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	inFence := false
	for line := range strings.SplitSeq(md, "\n") {
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
		}
		if inFence || !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(line, "#"))
		h = strings.ReplaceAll(h, "`", "")
		out[strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(h), ""), " ", "-")] = true
	}
	return out
}

// The dashboard loads as Grafana expects: unique panel ids, every panel
// on the ${datasource} variable, inside the 24-column grid, with a title
// and a description; every query parses with Grafana's variables filled in.
func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: want both", d.UID, d.Title)
	}
	var ds bool
	for _, v := range d.Templating.List {
		if v.Name == "datasource" && v.Type == "datasource" && string(v.Query) == `"prometheus"` {
			ds = true
		}
	}
	if !ds {
		t.Error(`no variable "datasource" of type datasource for prometheus: the dashboard would be tied to one data source`)
	}
	ids := map[int]bool{}
	panels := 0
	for _, p := range d.allPanels() {
		if ids[p.ID] {
			t.Errorf("panel id %d repeated", p.ID)
		}
		ids[p.ID] = true
		if p.Title == "" {
			t.Errorf("panel %d has no title", p.ID)
		}
		if g := p.GridPos; g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, g)
		}
		if p.Type == "row" {
			continue
		}
		panels++
		if p.Description == "" {
			t.Errorf("panel %q has no description", p.Title)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want uid ${datasource}", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.RefID == "" || refs[tg.RefID] || strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q: target %q empty or its refId repeated", p.Title, tg.RefID)
			}
			if tg.Datasource != nil && tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q target %s: datasource %+v, want the panel's ${datasource}", p.Title, tg.RefID, tg.Datasource)
			}
			refs[tg.RefID] = true
		}
	}
	if panels == 0 {
		t.Fatal("no panels")
	}
	if _, err := dashboardQueries(d); err != nil {
		t.Error(err)
	}
}

// Every alert and every panel is explained in the runbook.
func TestMonitoringDocumented(t *testing.T) {
	data, err := os.ReadFile(runbookFile)
	if err != nil {
		t.Fatal(err)
	}
	runbook := string(data)
	for _, a := range wantAlerts {
		if !strings.Contains(runbook, a) {
			t.Errorf("docs/runbook.md does not mention the alert %s", a)
		}
	}
	for _, p := range loadDashboard(t).allPanels() {
		if p.Type != "row" && !strings.Contains(runbook, "**"+p.Title+"**") {
			t.Errorf("docs/runbook.md does not explain the panel **%s**", p.Title)
		}
	}
}

// deploy/monitoring renders: the PrometheusRule as it is, and the dashboard
// in a ConfigMap labelled for Grafana's dashboard sidecar.
func TestMonitoringKustomization(t *testing.T) {
	out := kustomize(t, monitoringDir)
	o, err := decodeObjects(out)
	if err != nil {
		t.Fatalf("kustomize %s: %v", monitoringDir, err)
	}
	if o.rule == nil || o.cm == nil || o.job != nil || o.sa != nil || o.np != nil || o.pm != nil {
		t.Fatalf("kustomize %s: want a PrometheusRule and a ConfigMap only", monitoringDir)
	}
	if got, want := o.rule, loadRules(t); !equalJSON(t, got, want) {
		t.Errorf("the rendered PrometheusRule differs from %s", rulesFile)
	}
	if o.rule.Namespace != "" || o.cm.Namespace != "" {
		t.Errorf("namespaces %q, %q: want none (kubectl apply -n chooses)", o.rule.Namespace, o.cm.Namespace)
	}
	dash, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if o.cm.Name != "reencrypt-dashboard" || o.cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("ConfigMap %s labels %v, want reencrypt-dashboard with grafana_dashboard=1", o.cm.Name, o.cm.Labels)
	}
	if got := o.cm.Data[filepath.Base(dashboardFile)]; got != string(dash) {
		t.Errorf("the ConfigMap's %s is not the dashboard file (%d bytes, want %d)", filepath.Base(dashboardFile), len(got), len(dash))
	}
}

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ja, jb)
}

// The check that guards the dashboard and the rules must fail on a renamed
// metric, a wrong label, a wrong value and a bare histogram name, and accept
// the histogram's series and the recorded names.
func TestMetricCheckCatchesRenames(t *testing.T) {
	ex := exported{}
	ex.add(map[string]*dto.MetricFamily{
		"reencrypt_rows_total": {Type: dto.MetricType_COUNTER.Enum(), Metric: []*dto.Metric{
			{Label: []*dto.LabelPair{{Name: ptr("outcome"), Value: ptr("rotated")}}},
		}},
		"reencrypt_kms_request_duration_seconds": {Type: dto.MetricType_HISTOGRAM.Enum(), Metric: []*dto.Metric{
			{Label: []*dto.LabelPair{{Name: ptr("operation"), Value: ptr("Decrypt")}}},
		}},
	})
	for _, c := range []struct {
		expr string
		ok   bool
	}{
		{`rate(reencrypt_rows_total{outcome="rotated", namespace="x"}[5m])`, true},
		{`histogram_quantile(0.9, sum by (le) (rate(reencrypt_kms_request_duration_seconds_bucket{operation="ReEncrypt", le="+Inf"}[5m])))`, true},
		{`reencrypt_kms_request_duration_seconds_count`, true},
		{`kms_decrypt_latency > 1`, true},
		{`{__name__="reencrypt_rows_total"}`, true},
		{`rate(reencrypt_row_total[5m])`, false},                   // renamed
		{`reencrypt_rows_total{result="ok"}`, false},               // a label it lacks
		{`reencrypt_rows_total{outcome="rotatd"}`, false},          // a value it never has
		{`reencrypt_rows_total{outcome=~"rotated|skiped"}`, false}, //nolint:misspell // one alternative wrong, on purpose
		{`reencrypt_kms_request_duration_seconds`, false},          // bare histogram name
		{`reencrypt_kms_request_duration_seconds_bucket{operation="decrypt"}`, false},
		{`{__name__=~"reencrypt_.*"}`, false}, // no name to check
	} {
		e, err := promParser.ParseExpr(c.expr)
		if err != nil {
			t.Fatalf("%s: %v", c.expr, err)
		}
		probs := ex.problems(selectors([]query{{c.expr, e}}), []string{"kms_decrypt_latency"})
		if (len(probs) == 0) != c.ok {
			t.Errorf("%s: problems %q, want ok=%v", c.expr, probs, c.ok)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// Every metric the dashboard and the rules use is one the binary really
// exports, with the labels and label values they select: the test runs the
// production binary against Postgres and the KMS emulator (through a proxy
// that throttles a few requests, so the throttled series exist) and scrapes
// its METRICS_ADDR while it works. A renamed metric fails here.
func TestMonitoringMetricsExported(t *testing.T) {
	sels, recorded := allSelectors(t)
	ex := scrapeRun(t)

	var names []string
	for name := range ex {
		if strings.HasPrefix(name, "reencrypt_") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	t.Logf("exported: %v", names)
	for _, p := range ex.problems(sels, recorded) {
		t.Error(p)
	}
}

// scrapeRun builds cmd/reencrypt, rotates a small table with it and
// gathers every scrape of its /metrics until it exits 0.
func scrapeRun(t *testing.T) exported {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "reencrypt")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/reencrypt").CombinedOutput(); err != nil {
		t.Fatalf("go build ../cmd/reencrypt: %v\n%s", err, out)
	}

	e := fixture.New(t, "uuid")
	e.Seed(600, e.Old, 2)
	proxy, err := kmsfault.Start(e.KMS.Endpoint())
	if err != nil {
		t.Fatalf("kms proxy: %v", err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	proxy.Set(kmsfault.Faults{Throttle: 0.05})

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	cmd := exec.Command(bin, "run")
	cmd.Env = append(os.Environ(), e.KMS.Env()...)
	cmd.Env = append(cmd.Env,
		"AWS_ENDPOINT_URL_KMS="+proxy.Endpoint(),
		"DATABASE_URL="+e.URL,
		"OLD_KEY_ID="+e.Old.Ref,
		"NEW_KEY_ID="+e.New.Ref,
		"METRICS_ADDR="+addr,
		"BATCH_SIZE=25",
		"KMS_RATE_LIMIT=200",
		"PROGRESS=off",
		"PUSHGATEWAY_URL=",
	)
	out := &testbed.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-done
		}
	})

	ex := exported{}
	scrapes := 0
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.After(3 * time.Minute)
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("reencrypt run: %v\n%s", err, out.String())
			}
			if scrapes < 3 {
				t.Fatalf("only %d scrapes of %s during the run, want a few (run too short?)\n%s", scrapes, addr, out.String())
			}
			t.Logf("%d scrapes during the run; KMS requests throttled by the proxy: %d", scrapes, proxy.Throttled())
			return ex
		case <-deadline:
			t.Fatalf("reencrypt run still running after 3 minutes\n%s", out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if mfs, err := scrapeOnce(client, addr); err == nil {
			ex.add(mfs)
			scrapes++
		}
	}
}

func scrapeOnce(c *http.Client, addr string) (map[string]*dto.MetricFamily, error) {
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(bytes.NewReader(body))
}
