package deploy

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite "+exampleGolden+" from what the kustomize library renders")

const (
	baseDir       = "kustomize/base"
	exampleDir    = "kustomize/overlays/example"
	exampleGolden = "kustomize/example.rendered.yaml"
	monitoringDir = "monitoring"
)

// kustomize renders the kustomization in dir as `kubectl kustomize dir` does:
// with the kustomize library kubectl embeds, from the files on disk, with the
// CLI's defaults (files only from inside the kustomization's root, no
// plugins, no --reorder flag: the kustomization's sortOptions, else the
// legacy order).
func kustomize(t *testing.T, dir string) []byte {
	t.Helper()
	opts := krusty.MakeDefaultOptions()
	opts.Reorder = krusty.ReorderOptionUnspecified
	m, err := krusty.MakeKustomizer(opts).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		t.Fatalf("kustomize %s: as YAML: %v", dir, err)
	}
	return out
}

// objects are the documents of a rendered kustomization, each decoded
// strictly into its API type; at most one of each kind.
type objects struct {
	job  *batchv1.Job
	sa   *corev1.ServiceAccount
	cm   *corev1.ConfigMap
	np   *networkingv1.NetworkPolicy
	pm   *podMonitor
	rule *prometheusRule
}

// podMonitor is the subset of the Prometheus Operator's PodMonitor
// (monitoring.coreos.com/v1) the manifests use, with the CRD's field names.
// The operator's Go types are not a dependency (its module is large); a field
// outside this subset, or a misspelt one, is an unknown field and fails the
// strict decoding: extend the subset from the CRD reference when needed.
type podMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector *struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		JobLabel            string   `json:"jobLabel,omitempty"`
		PodTargetLabels     []string `json:"podTargetLabels,omitempty"`
		PodMetricsEndpoints []struct {
			Port          string `json:"port,omitempty"`
			Path          string `json:"path,omitempty"`
			Scheme        string `json:"scheme,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

// prometheusRule is the subset of the Prometheus Operator's PrometheusRule
// (monitoring.coreos.com/v1) the rules use; the rule fields are those of a
// Prometheus rule file. Strict like podMonitor.
type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Groups []ruleGroup `json:"groups"`
	} `json:"spec"`
}

type ruleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []rule `json:"rules"`
}

type rule struct {
	Record        string            `json:"record,omitempty"`
	Alert         string            `json:"alert,omitempty"`
	Expr          string            `json:"expr"`
	For           string            `json:"for,omitempty"`
	KeepFiringFor string            `json:"keep_firing_for,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// decodeObjects decodes every document strictly into the type of its kind
// (apiVersion checked); unknown kinds and a second object of a kind are
// refused.
func decodeObjects(data []byte) (*objects, error) {
	o := &objects{}
	docs := splitDocuments(data)
	if len(docs) == 0 {
		return nil, errors.New("no YAML documents")
	}
	for i, doc := range docs {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, fmt.Errorf("document %d: reading kind: %w", i, err)
		}
		var (
			obj     any
			taken   bool
			wantAPI string
		)
		switch tm.Kind {
		case "Job":
			taken, wantAPI = o.job != nil, "batch/v1"
			o.job = &batchv1.Job{}
			obj = o.job
		case "ServiceAccount":
			taken, wantAPI = o.sa != nil, "v1"
			o.sa = &corev1.ServiceAccount{}
			obj = o.sa
		case "ConfigMap":
			taken, wantAPI = o.cm != nil, "v1"
			o.cm = &corev1.ConfigMap{}
			obj = o.cm
		case "NetworkPolicy":
			taken, wantAPI = o.np != nil, "networking.k8s.io/v1"
			o.np = &networkingv1.NetworkPolicy{}
			obj = o.np
		case "PodMonitor":
			taken, wantAPI = o.pm != nil, "monitoring.coreos.com/v1"
			o.pm = &podMonitor{}
			obj = o.pm
		case "PrometheusRule":
			taken, wantAPI = o.rule != nil, "monitoring.coreos.com/v1"
			o.rule = &prometheusRule{}
			obj = o.rule
		default:
			return nil, fmt.Errorf("document %d: unexpected kind %q (apiVersion %q)", i, tm.Kind, tm.APIVersion)
		}
		if taken {
			return nil, fmt.Errorf("document %d: a second %s", i, tm.Kind)
		}
		if tm.APIVersion != wantAPI {
			return nil, fmt.Errorf("document %d (%s): apiVersion %q, want %q", i, tm.Kind, tm.APIVersion, wantAPI)
		}
		if err := strictYAML(doc, obj); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i, tm.Kind, err)
		}
	}
	return o, nil
}

// renderJobObjects renders a kustomization of the Job (the base or an
// overlay) and insists on the five objects it must hold.
func renderJobObjects(t *testing.T, dir string) (*objects, []byte) {
	t.Helper()
	out := kustomize(t, dir)
	o, err := decodeObjects(out)
	if err != nil {
		t.Fatalf("kustomize %s: %v\n%s", dir, err, out)
	}
	if o.job == nil || o.sa == nil || o.cm == nil || o.np == nil || o.pm == nil || o.rule != nil {
		t.Fatalf("kustomize %s: Job %v, ServiceAccount %v, ConfigMap %v, NetworkPolicy %v, PodMonitor %v, PrometheusRule %v; "+
			"want the first five and no PrometheusRule", dir, o.job != nil, o.sa != nil, o.cm != nil, o.np != nil, o.pm != nil, o.rule != nil)
	}
	return o, out
}

// yamlDiff lists the lines of want's YAML that got's lacks (-) and the lines
// got has that want lacks (+), enough to find a drifted field.
func yamlDiff(want, got any) string {
	w, _ := yaml.Marshal(want)
	g, _ := yaml.Marshal(got)
	wl, gl := strings.Split(string(w), "\n"), strings.Split(string(g), "\n")
	count := func(lines []string) map[string]int {
		m := map[string]int{}
		for _, l := range lines {
			m[l]++
		}
		return m
	}
	wc, gc := count(wl), count(gl)
	var b strings.Builder
	for _, l := range wl {
		if gc[l] > 0 {
			gc[l]--
			continue
		}
		fmt.Fprintf(&b, "- %s\n", l)
	}
	for _, l := range gl {
		if wc[l] > 0 {
			wc[l]--
			continue
		}
		fmt.Fprintf(&b, "+ %s\n", l)
	}
	return b.String()
}

// The base holds the very objects of deploy/job.yaml, so that every check of
// deploy_test.go on job.yaml holds for the base too, and the single file and
// the kustomization cannot drift apart.
func TestKustomizeBaseEqualsJobYAML(t *testing.T) {
	base, _ := renderJobObjects(t, baseDir)
	file := loadManifests(t)
	for _, c := range []struct {
		kind      string
		got, want any
	}{
		{"Job", base.job, file.job},
		{"ServiceAccount", base.sa, file.sa},
		{"ConfigMap", base.cm, file.cm},
	} {
		if !equality.Semantic.DeepEqual(c.got, c.want) {
			t.Errorf("the %s of %s differs from deploy/job.yaml's (- job.yaml, + base):\n%s", c.kind, baseDir, yamlDiff(c.want, c.got))
		}
	}
	for _, m := range []metav1.Object{base.job, base.sa, base.cm, base.np, base.pm} {
		if m.GetNamespace() != "" {
			t.Errorf("%s in the base has namespace %q, want none (the overlay sets it)", m.GetName(), m.GetNamespace())
		}
	}
}

// The example overlay renders to the committed golden file, so that users
// can compare `kubectl kustomize deploy/kustomize/overlays/example` with it,
// and changes only what an overlay is for: namespace, image tag, shard
// count, keys, region and IAM role.
func TestKustomizeOverlayExample(t *testing.T) {
	o, out := renderJobObjects(t, exampleDir)
	if *update {
		if err := os.WriteFile(exampleGolden, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	golden, err := os.ReadFile(exampleGolden)
	if err != nil {
		t.Fatalf("%v (create it with `go test ./deploy -run TestKustomizeOverlayExample -update`)", err)
	}
	if !bytes.Equal(out, golden) {
		t.Errorf("%s is not what %s renders to (- golden, + rendered):\n%s\nIf the change is intended: "+
			"go test ./deploy -run TestKustomizeOverlayExample -update, and review the diff",
			exampleGolden, exampleDir, lineDiff(string(golden), string(out)))
	}

	base, _ := renderJobObjects(t, baseDir)

	ns := o.job.Namespace
	if ns == "" || ns == "default" {
		t.Errorf("Job namespace = %q, want the overlay's own namespace", ns)
	}
	for _, m := range []metav1.Object{o.job, o.sa, o.cm, o.np, o.pm} {
		if m.GetNamespace() != ns {
			t.Errorf("%s: namespace %q, want %q like the Job's", m.GetName(), m.GetNamespace(), ns)
		}
	}

	c := container(t, o.job)
	if name, tag, ok := strings.Cut(c.Image, ":"); !ok || name != "ghcr.io/example/reencrypt" || tag == "" ||
		tag == "latest" || strings.ContainsAny(tag, "<>{}") {
		t.Errorf("image = %q, want ghcr.io/example/reencrypt with a released tag", c.Image)
	}

	data := o.cm.Data
	shards, err := strconv.Atoi(data["SHARD_COUNT"])
	completions, _ := deref(o.job.Spec.Completions)
	parallelism, _ := deref(o.job.Spec.Parallelism)
	if err != nil || int32(shards) != completions || int32(shards) != parallelism {
		t.Errorf("SHARD_COUNT = %q, completions = %s, parallelism = %s, want all three equal",
			data["SHARD_COUNT"], show(o.job.Spec.Completions), show(o.job.Spec.Parallelism))
	}
	if baseCompletions, _ := deref(base.job.Spec.Completions); completions == baseCompletions {
		t.Errorf("completions = %d as in the base, want the example to show how to change the shard count", completions)
	}
	for _, k := range []string{"OLD_KEY_ID", "NEW_KEY_ID", "AWS_REGION"} {
		if v := data[k]; v == "" || strings.ContainsAny(v, "<>") {
			t.Errorf("ConfigMap %s = %q, want a real value, not the base's placeholder", k, v)
		}
	}
	if data["OLD_KEY_ID"] == data["NEW_KEY_ID"] {
		t.Errorf("OLD_KEY_ID and NEW_KEY_ID are both %q", data["OLD_KEY_ID"])
	}
	if arn := o.sa.Annotations[irsaAnnotation]; !regexp.MustCompile(`^arn:aws:iam::\d{12}:role/[\w+=,.@-]+$`).MatchString(arn) {
		t.Errorf("%s = %q, want a role ARN with a 12-digit account id", irsaAnnotation, arn)
	}

	// Put back the fields an overlay is meant to change: the rest must be the
	// base's, so every check of the base holds for the overlay too.
	job := o.job.DeepCopy()
	job.Namespace = ""
	job.Spec.Completions, job.Spec.Parallelism = base.job.Spec.Completions, base.job.Spec.Parallelism
	container(t, job).Image = container(t, base.job).Image
	sa := o.sa.DeepCopy()
	sa.Namespace = ""
	sa.Annotations[irsaAnnotation] = base.sa.Annotations[irsaAnnotation]
	cm := o.cm.DeepCopy()
	cm.Namespace = ""
	if got, want := sortedKeys(cm.Data), sortedKeys(base.cm.Data); !slices.Equal(got, want) {
		t.Errorf("ConfigMap keys %v, want the base's %v (a misspelt variable is silently ignored by the binary)", got, want)
	}
	cm.Data = base.cm.Data
	np := o.np.DeepCopy()
	np.Namespace = ""
	pm := *o.pm
	pm.Namespace = ""
	for _, c := range []struct {
		kind      string
		got, want any
	}{
		{"Job", job, base.job},
		{"ServiceAccount", sa, base.sa},
		{"ConfigMap", cm, base.cm},
		{"NetworkPolicy", np, base.np},
		{"PodMonitor", &pm, base.pm},
	} {
		if !equality.Semantic.DeepEqual(c.got, c.want) {
			t.Errorf("the overlay's %s differs from the base's beyond namespace, shards, image, keys and role (- base, + overlay):\n%s",
				c.kind, yamlDiff(c.want, c.got))
		}
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// lineDiff shows the first lines where two texts part, with some context.
func lineDiff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	i := 0
	for i < len(wl) && i < len(gl) && wl[i] == gl[i] {
		i++
	}
	var b strings.Builder
	for j := max(0, i-3); j < i; j++ {
		fmt.Fprintf(&b, "  %s\n", wl[j])
	}
	for j := i; j < min(len(wl), i+5); j++ {
		fmt.Fprintf(&b, "- %s\n", wl[j])
	}
	for j := i; j < min(len(gl), i+5); j++ {
		fmt.Fprintf(&b, "+ %s\n", gl[j])
	}
	return b.String()
}

// metricsPort is the Job container's port named `metrics`, which must be
// METRICS_ADDR's port.
func metricsPort(t *testing.T, o *objects) corev1.ContainerPort {
	t.Helper()
	c := container(t, o.job)
	i := slices.IndexFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "metrics" })
	if i < 0 {
		t.Fatalf("no container port named metrics in %+v", c.Ports)
	}
	p := c.Ports[i]
	if _, port, err := net.SplitHostPort(o.cm.Data["METRICS_ADDR"]); err != nil || port != strconv.Itoa(int(p.ContainerPort)) {
		t.Fatalf("METRICS_ADDR = %q, want the port of container port metrics, %d", o.cm.Data["METRICS_ADDR"], p.ContainerPort)
	}
	return p
}

// selects reports whether sel selects the Job's pods (an empty selector
// would select every pod of the namespace: refused).
func selects(t testing.TB, sel *metav1.LabelSelector, job *batchv1.Job) bool {
	t.Helper()
	if sel == nil || (len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0) {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("selector %+v: %v", sel, err)
	}
	return s.Matches(labels.Set(job.Spec.Template.Labels))
}

// The PodMonitor scrapes the Job's pods on the metrics port, and the
// NetworkPolicy lets them reach Postgres, KMS and DNS and nothing else, in
// the base and in the example overlay.
func TestKustomizeScrapingAndNetworkPolicy(t *testing.T) {
	for _, dir := range []string{baseDir, exampleDir} {
		t.Run(dir, func(t *testing.T) {
			o, _ := renderJobObjects(t, dir)
			port := metricsPort(t, o)
			checkPodMonitor(t, o.pm, o.job, port)
			checkNetworkPolicy(t, o.np, o.job, port)
		})
	}
}

func checkPodMonitor(t testing.TB, pm *podMonitor, job *batchv1.Job, port corev1.ContainerPort) {
	t.Helper()
	if !selects(t, &pm.Spec.Selector, job) {
		t.Errorf("PodMonitor selector %+v does not select the Job's pod labels %v", pm.Spec.Selector, job.Spec.Template.Labels)
	}
	if ns := pm.Spec.NamespaceSelector; ns != nil && (ns.Any || !slices.Equal(ns.MatchNames, []string{job.Namespace})) {
		t.Errorf("PodMonitor namespaceSelector %+v, want none (the PodMonitor's own namespace, the Job's)", ns)
	}
	eps := pm.Spec.PodMetricsEndpoints
	if len(eps) != 1 {
		t.Fatalf("PodMonitor has %d endpoints, want 1", len(eps))
	}
	ep := eps[0]
	if ep.Port != port.Name {
		t.Errorf("PodMonitor endpoint port %q, want the container port name %q", ep.Port, port.Name)
	}
	if ep.Path != "/metrics" {
		t.Errorf("PodMonitor endpoint path %q, want /metrics", ep.Path)
	}
	if ep.Scheme != "" && ep.Scheme != "http" {
		t.Errorf("PodMonitor endpoint scheme %q, want http (the binary serves plain HTTP)", ep.Scheme)
	}
	// The alerts look at 5 and 10 minute windows: a few scrapes in each.
	if d, err := time.ParseDuration(ep.Interval); err != nil || d <= 0 || d > time.Minute {
		t.Errorf("PodMonitor interval %q, want a duration of at most 1m", ep.Interval)
	}
}

// policyPort is one port a NetworkPolicy rule opens.
type policyPort struct {
	protocol corev1.Protocol
	port     string
}

func rulePorts(t testing.TB, what string, ports []networkingv1.NetworkPolicyPort, named map[string]int32) []policyPort {
	t.Helper()
	if len(ports) == 0 {
		t.Errorf("%s rule without ports: it opens every port", what)
	}
	var out []policyPort
	for _, p := range ports {
		proto := corev1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		if p.Port == nil {
			t.Errorf("%s rule opens every %s port", what, proto)
			continue
		}
		if p.EndPort != nil {
			t.Errorf("%s rule opens a port range %s-%d", what, p.Port, *p.EndPort)
		}
		port := p.Port.String()
		if n, ok := named[port]; ok {
			port = strconv.Itoa(int(n))
		}
		out = append(out, policyPort{proto, port})
	}
	return out
}

func checkNetworkPolicy(t testing.TB, np *networkingv1.NetworkPolicy, job *batchv1.Job, metrics corev1.ContainerPort) {
	t.Helper()
	if !selects(t, &np.Spec.PodSelector, job) {
		t.Errorf("NetworkPolicy podSelector %+v does not select the Job's pod labels %v", np.Spec.PodSelector, job.Spec.Template.Labels)
	}
	types := np.Spec.PolicyTypes
	if !slices.Contains(types, networkingv1.PolicyTypeEgress) || !slices.Contains(types, networkingv1.PolicyTypeIngress) {
		t.Errorf("policyTypes = %v, want Ingress and Egress (else that direction is not restricted)", types)
	}
	named := map[string]int32{metrics.Name: metrics.ContainerPort}

	var egress []policyPort
	for i, r := range np.Spec.Egress {
		egress = append(egress, rulePorts(t, fmt.Sprintf("egress %d", i), r.Ports, named)...)
	}
	slices.SortFunc(egress, comparePolicyPorts)
	want := []policyPort{{corev1.ProtocolTCP, "443"}, {corev1.ProtocolTCP, "53"}, {corev1.ProtocolTCP, "5432"}, {corev1.ProtocolUDP, "53"}}
	if !slices.Equal(egress, want) {
		t.Errorf("egress opens %v, want exactly %v (KMS/STS, DNS, Postgres)", egress, want)
	}

	var ingress []policyPort
	for i, r := range np.Spec.Ingress {
		ingress = append(ingress, rulePorts(t, fmt.Sprintf("ingress %d", i), r.Ports, named)...)
	}
	if want := []policyPort{{corev1.ProtocolTCP, strconv.Itoa(int(metrics.ContainerPort))}}; !slices.Equal(ingress, want) {
		t.Errorf("ingress opens %v, want only the metrics port %v", ingress, want)
	}
}

func comparePolicyPorts(a, b policyPort) int {
	return strings.Compare(string(a.protocol)+"/"+a.port, string(b.protocol)+"/"+b.port)
}

const validPodMonitor = `
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata:
  name: x
spec:
  selector:
    matchLabels:
      app: x
  podMetricsEndpoints:
    - port: metrics
      interval: 15s
`

const validPrometheusRule = `
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: x
spec:
  groups:
    - name: g
      rules:
        - alert: A
          expr: up == 0
          for: 5m
`

// The local CRD types refuse what the Operator's CRD schema would prune or
// reject: a misspelt field must fail the test, not vanish.
func TestOperatorKindsDecodeStrictly(t *testing.T) {
	for _, c := range []struct {
		name, valid, old, new string
	}{
		{"PodMonitor spec field", validPodMonitor, "podMetricsEndpoints:", "podMetricEndpoints:"},
		{"PodMonitor endpoint field", validPodMonitor, "interval:", "intervall:"},
		{"PodMonitor wrong case", validPodMonitor, "selector:", "Selector:"},
		{"PrometheusRule rule field", validPrometheusRule, "expr:", "expression:"},
		{"PrometheusRule group field", validPrometheusRule, "rules:", "rule:"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := decodeObjects([]byte(c.valid)); err != nil {
				t.Fatalf("the valid object was refused: %v", err)
			}
			if !strings.Contains(c.valid, c.old) {
				t.Fatalf("test bug: %q not in the valid object", c.old)
			}
			if _, err := decodeObjects([]byte(strings.Replace(c.valid, c.old, c.new, 1))); err == nil {
				t.Errorf("decodeObjects accepted %q, want an error", c.new)
			}
		})
	}
}
