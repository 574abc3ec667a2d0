package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// The engine's documented exit codes (docs/design.md).
const (
	exitQuarantined = 65 // EX_DATAERR: done, rows quarantined
	exitTempFail    = 75 // EX_TEMPFAIL: worth a retry
	exitKeyUnusable = 77 // EX_NOPERM: a KMS key is unusable
	exitConfig      = 78 // EX_CONFIG: configuration refused
)

const (
	containerName     = "reencrypt"
	configMapName     = "reencrypt-config"
	dbSecretName      = "reencrypt-db"
	dbSecretKey       = "database-url"
	completionIndexFP = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
	irsaAnnotation    = "eks.amazonaws.com/role-arn"

	oldKeyARN = "arn:aws:kms:<REGION>:<ACCOUNT_ID>:key/<OLD_KEY_ID>"
	newKeyARN = "arn:aws:kms:<REGION>:<ACCOUNT_ID>:key/<NEW_KEY_ID>"
)

// ---------------------------------------------------------------------------
// Strict decoding of the manifests.

// strictYAML decodes one YAML document into obj the way the API server decodes
// a request body in strict field validation: duplicate YAML keys are refused
// (YAMLToJSONStrict), then field names must match the API types exactly, case
// included, with unknown and duplicate fields refused (sigs.k8s.io/json).
//
// yaml.UnmarshalStrict alone is not enough: it decodes with encoding/json,
// which matches field names case-insensitively, so `RestartPolicy: Always`
// would silently land in restartPolicy; kubectl would reject it.
func strictYAML(doc []byte, obj any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return fmt.Errorf("yaml: %w", err)
	}
	strictErrs, err := kjson.UnmarshalStrict(j, obj)
	if err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	if len(strictErrs) > 0 {
		return fmt.Errorf("strict decoding: %w", errors.Join(strictErrs...))
	}
	return nil
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*(?:#.*)?$`)

// splitDocuments cuts a multi-document YAML file at its `---` lines and drops
// the documents that hold nothing but comments and blank lines.
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	for _, d := range docSeparator.Split(string(data), -1) {
		empty := true
		for line := range strings.SplitSeq(d, "\n") {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				empty = false
				break
			}
		}
		if !empty {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

type manifests struct {
	job *batchv1.Job
	sa  *corev1.ServiceAccount
	cm  *corev1.ConfigMap
}

// decodeManifests decodes every document of a job.yaml strictly into the API
// type its kind names (decodeObjects, shared with the kustomize test); it
// refuses kinds the single file does not hold, and duplicates.
func decodeManifests(data []byte) (*manifests, error) {
	o, err := decodeObjects(data)
	if err != nil {
		return nil, err
	}
	if o.np != nil || o.pm != nil || o.rule != nil {
		return nil, errors.New("unexpected kind: job.yaml holds a Job, a ServiceAccount and a ConfigMap only")
	}
	m := &manifests{job: o.job, sa: o.sa, cm: o.cm}
	switch {
	case m.job == nil:
		return nil, errors.New("no Job in the file")
	case m.sa == nil:
		return nil, errors.New("no ServiceAccount in the file")
	case m.cm == nil:
		return nil, errors.New("no ConfigMap in the file")
	}
	return m, nil
}

func loadManifests(t *testing.T) *manifests {
	t.Helper()
	data, err := os.ReadFile("job.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := decodeManifests(data)
	if err != nil {
		t.Fatalf("job.yaml: %v", err)
	}
	return m
}

func container(t *testing.T, job *batchv1.Job) *corev1.Container {
	t.Helper()
	cs := job.Spec.Template.Spec.Containers
	for i := range cs {
		if cs[i].Name == containerName {
			return &cs[i]
		}
	}
	t.Fatalf("no container named %q in the Job (got %d containers)", containerName, len(cs))
	return nil
}

func deref[T any](p *T) (T, bool) {
	if p == nil {
		var zero T
		return zero, false
	}
	return *p, true
}

func show[T any](p *T) string {
	if p == nil {
		return "<unset>"
	}
	return fmt.Sprint(*p)
}

// ---------------------------------------------------------------------------
// The decoder itself.

const validJob = `
apiVersion: batch/v1
kind: Job
metadata:
  name: x
spec:
  completionMode: Indexed
  completions: 2
  parallelism: 2
  podFailurePolicy:
    rules:
      - action: FailJob
        onExitCodes:
          operator: In
          values: [78]
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: c
          image: i
`

func TestStrictDecoderAcceptsValidJob(t *testing.T) {
	var job batchv1.Job
	if err := strictYAML([]byte(validJob), &job); err != nil {
		t.Fatalf("a valid Job was rejected: %v", err)
	}
	if got, _ := deref(job.Spec.CompletionMode); got != batchv1.IndexedCompletion {
		t.Errorf("completionMode = %q, want %q", got, batchv1.IndexedCompletion)
	}
}

// Each case breaks the valid Job in one way kubectl would refuse; the strict
// decoder must refuse it too, naming the offending field.
func TestStrictDecoderRejectsBrokenFields(t *testing.T) {
	cases := []struct {
		name, old, new, mention string
	}{
		{"misspelt field", "completionMode:", "completionsMode:", "completionsMode"},
		{"misspelt nested field", "onExitCodes:", "onExitCode:", "onExitCode"},
		{"wrong case", "restartPolicy:", "RestartPolicy:", "RestartPolicy"},
		{"duplicate key", "  parallelism: 2\n", "  parallelism: 2\n  parallelism: 3\n", "parallelism"},
		{"wrong type", "completions: 2", "completions: two", "completions"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(validJob, c.old) {
				t.Fatalf("test bug: %q not in the valid Job", c.old)
			}
			broken := strings.Replace(validJob, c.old, c.new, 1)
			var job batchv1.Job
			err := strictYAML([]byte(broken), &job)
			if err == nil {
				t.Fatalf("strictYAML accepted a Job with %s (%q), want an error", c.name, c.new)
			}
			if !strings.Contains(err.Error(), c.mention) {
				t.Errorf("error %q does not mention %q", err, c.mention)
			}
		})
	}
}

func TestDecodeManifestsRejectsMisspeltFieldInFile(t *testing.T) {
	data, err := os.ReadFile("job.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte("completionMode: Indexed")) {
		t.Fatal("job.yaml has no `completionMode: Indexed` line to break")
	}
	broken := bytes.Replace(data, []byte("completionMode: Indexed"), []byte("completionsMode: Indexed"), 1)
	if _, err := decodeManifests(broken); err == nil {
		t.Fatal("decodeManifests accepted job.yaml with `completionsMode`, want an error")
	}
}

func TestSplitDocuments(t *testing.T) {
	in := "# header only\n---\na: 1\n--- # comment\n\n# nothing\n---\nb: 2\n"
	got := splitDocuments([]byte(in))
	if len(got) != 2 {
		t.Fatalf("got %d documents %q, want 2", len(got), got)
	}
}

// ---------------------------------------------------------------------------
// The Job.

func TestManifestKinds(t *testing.T) {
	m := loadManifests(t)
	if m.cm.Name != configMapName {
		t.Errorf("ConfigMap name = %q, want %q", m.cm.Name, configMapName)
	}
	if got, want := m.job.Spec.Template.Spec.ServiceAccountName, m.sa.Name; got != want {
		t.Errorf("Job serviceAccountName = %q, want the ServiceAccount in the file, %q", got, want)
	}
}

func TestJobIsIndexedOneShardPerIndex(t *testing.T) {
	m := loadManifests(t)
	s := m.job.Spec
	if got, _ := deref(s.CompletionMode); got != batchv1.IndexedCompletion {
		t.Errorf("completionMode = %s, want %s", show(s.CompletionMode), batchv1.IndexedCompletion)
	}
	completions, ok1 := deref(s.Completions)
	parallelism, ok2 := deref(s.Parallelism)
	if !ok1 || !ok2 || completions != 5 || parallelism != 5 {
		t.Errorf("completions = %s, parallelism = %s, want 5 and 5", show(s.Completions), show(s.Parallelism))
	}
	if b, ok := deref(s.BackoffLimitPerIndex); !ok || b < 1 {
		t.Errorf("backoffLimitPerIndex = %s, want set and >= 1 (75 must be retried)", show(s.BackoffLimitPerIndex))
	}
	// API rule: maxFailedIndexes only with backoffLimitPerIndex, at most completions.
	if mfi, ok := deref(s.MaxFailedIndexes); ok && (mfi < 0 || mfi > completions) {
		t.Errorf("maxFailedIndexes = %d, want within [0, completions=%d]", mfi, completions)
	}
	if got := s.Template.Spec.RestartPolicy; got != corev1.RestartPolicyNever {
		t.Errorf("restartPolicy = %q, want %q (required by podFailurePolicy)", got, corev1.RestartPolicyNever)
	}
	// API rule: with podFailurePolicy only Failed is allowed.
	if p, ok := deref(s.PodReplacementPolicy); ok && p != batchv1.Failed {
		t.Errorf("podReplacementPolicy = %q, want %q (the only value allowed with podFailurePolicy)", p, batchv1.Failed)
	}
	if d, ok := deref(s.ActiveDeadlineSeconds); !ok || d < 3600 {
		t.Errorf("activeDeadlineSeconds = %s, want set and >= 3600", show(s.ActiveDeadlineSeconds))
	}
	if _, ok := deref(s.TTLSecondsAfterFinished); !ok {
		t.Errorf("ttlSecondsAfterFinished unset, want set")
	}
}

// decide returns the action of the first rule that matches a pod whose
// container exited with code and that carries the given True conditions, as
// the Job controller evaluates podFailurePolicy; "" when no rule matches
// (the default: counted against the backoff limit).
func decide(rules []batchv1.PodFailurePolicyRule, code int32, conds ...corev1.PodConditionType) batchv1.PodFailurePolicyAction {
	for _, r := range rules {
		if ec := r.OnExitCodes; ec != nil && code != 0 {
			if ec.ContainerName != nil && *ec.ContainerName != containerName {
				continue
			}
			in := slices.Contains(ec.Values, code)
			if (ec.Operator == batchv1.PodFailurePolicyOnExitCodesOpIn && in) ||
				(ec.Operator == batchv1.PodFailurePolicyOnExitCodesOpNotIn && !in) {
				return r.Action
			}
		}
		for _, p := range r.OnPodConditions {
			status := p.Status
			if status == "" {
				status = corev1.ConditionTrue
			}
			if status == corev1.ConditionTrue && slices.Contains(conds, p.Type) {
				return r.Action
			}
		}
	}
	return ""
}

func TestPodFailurePolicyMapsExitCodes(t *testing.T) {
	m := loadManifests(t)
	pfp := m.job.Spec.PodFailurePolicy
	if pfp == nil || len(pfp.Rules) == 0 {
		t.Fatal("podFailurePolicy unset or empty, want rules for the exit codes")
	}
	rules := pfp.Rules

	var failJob []int32
	for code := int32(1); code <= 255; code++ {
		switch decide(rules, code) {
		case batchv1.PodFailurePolicyActionFailJob:
			failJob = append(failJob, code)
		case batchv1.PodFailurePolicyActionFailIndex:
			t.Errorf("exit %d: FailIndex, want no FailIndex rule (maxFailedIndexes decides)", code)
		}
	}
	if want := []int32{exitQuarantined, exitKeyUnusable, exitConfig}; !slices.Equal(failJob, want) {
		t.Errorf("exit codes that fail the Job = %v, want exactly %v", failJob, want)
	}

	for _, code := range []int32{1, 2, exitTempFail, 137, 143} {
		if got := decide(rules, code); got != "" && got != batchv1.PodFailurePolicyActionCount {
			t.Errorf("exit %d: action %q, want Count or the default (retried)", code, got)
		}
	}
	if got := decide(rules, exitTempFail); got != batchv1.PodFailurePolicyActionCount {
		t.Errorf("exit %d: action %q, want an explicit Count rule", exitTempFail, got)
	}
	// Nothing in the policy may fail the Job or the index on 75, whatever
	// the rule order: check each exit-code rule on its own.
	for i, r := range rules {
		if r.Action != batchv1.PodFailurePolicyActionFailJob && r.Action != batchv1.PodFailurePolicyActionFailIndex {
			continue
		}
		if got := decide([]batchv1.PodFailurePolicyRule{r}, exitTempFail); got != "" {
			t.Errorf("rule %d (%s) matches exit %d, want no failing rule to match it", i, r.Action, exitTempFail)
		}
	}

	// A drained or preempted pod (the engine exits 75 on SIGTERM) spends no retry.
	for _, code := range []int32{exitTempFail, 143} {
		if got := decide(rules, code, corev1.DisruptionTarget); got != batchv1.PodFailurePolicyActionIgnore {
			t.Errorf("exit %d with DisruptionTarget: action %q, want Ignore", code, got)
		}
	}
	// A refused configuration stays fatal even if the pod was also evicted.
	if got := decide(rules, exitConfig, corev1.DisruptionTarget); got != batchv1.PodFailurePolicyActionFailJob {
		t.Errorf("exit %d with DisruptionTarget: action %q, want FailJob", exitConfig, got)
	}
}

// The API server's validation of podFailurePolicy, which the strict decoder
// does not run.
func TestPodFailurePolicyPassesAPIValidation(t *testing.T) {
	m := loadManifests(t)
	pfp := m.job.Spec.PodFailurePolicy
	if pfp == nil {
		t.Fatal("podFailurePolicy unset")
	}
	if n := len(pfp.Rules); n > 20 {
		t.Errorf("%d rules, want at most 20", n)
	}
	for i, r := range pfp.Rules {
		if (r.OnExitCodes == nil) == (len(r.OnPodConditions) == 0) {
			t.Errorf("rule %d: want exactly one of onExitCodes and onPodConditions", i)
		}
		switch r.Action {
		case batchv1.PodFailurePolicyActionFailJob, batchv1.PodFailurePolicyActionIgnore,
			batchv1.PodFailurePolicyActionCount, batchv1.PodFailurePolicyActionFailIndex:
		default:
			t.Errorf("rule %d: action %q, want FailJob, FailIndex, Ignore or Count", i, r.Action)
		}
		if ec := r.OnExitCodes; ec != nil {
			if ec.ContainerName != nil && *ec.ContainerName != containerName {
				t.Errorf("rule %d: containerName %q, want %q", i, *ec.ContainerName, containerName)
			}
			if ec.Operator != batchv1.PodFailurePolicyOnExitCodesOpIn && ec.Operator != batchv1.PodFailurePolicyOnExitCodesOpNotIn {
				t.Errorf("rule %d: operator %q, want In or NotIn", i, ec.Operator)
			}
			if len(ec.Values) == 0 || len(ec.Values) > 255 {
				t.Errorf("rule %d: %d values, want 1..255", i, len(ec.Values))
			}
			for j := 1; j < len(ec.Values); j++ {
				if ec.Values[j] <= ec.Values[j-1] {
					t.Errorf("rule %d: values %v, want strictly ascending", i, ec.Values)
					break
				}
			}
			if ec.Operator == batchv1.PodFailurePolicyOnExitCodesOpIn && slices.Contains(ec.Values, 0) {
				t.Errorf("rule %d: value 0 with operator In, not allowed", i)
			}
		}
	}
}

func TestPodSecurityIsRestricted(t *testing.T) {
	m := loadManifests(t)
	ps := m.job.Spec.Template.Spec
	c := container(t, m.job)
	psc := ps.SecurityContext
	if psc == nil {
		t.Fatal("pod securityContext unset")
	}
	csc := c.SecurityContext
	if csc == nil {
		t.Fatal("container securityContext unset")
	}

	if v, _ := deref(psc.RunAsNonRoot); !v {
		t.Errorf("pod runAsNonRoot = %s, want true", show(psc.RunAsNonRoot))
	}
	if v, ok := deref(csc.RunAsNonRoot); ok && !v {
		t.Errorf("container runAsNonRoot = false overrides the pod's true")
	}
	if u, ok := deref(psc.RunAsUser); !ok || u == 0 {
		t.Errorf("pod runAsUser = %s, want set and non-zero", show(psc.RunAsUser))
	}
	if u, ok := deref(csc.RunAsUser); ok && u == 0 {
		t.Errorf("container runAsUser = 0, want non-root")
	}
	if sp := psc.SeccompProfile; sp == nil || sp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod seccompProfile = %+v, want type RuntimeDefault", sp)
	}
	if sp := csc.SeccompProfile; sp != nil && sp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container seccompProfile = %s, overrides RuntimeDefault", sp.Type)
	}
	if v, ok := deref(csc.AllowPrivilegeEscalation); !ok || v {
		t.Errorf("allowPrivilegeEscalation = %s, want false", show(csc.AllowPrivilegeEscalation))
	}
	if v, _ := deref(csc.ReadOnlyRootFilesystem); !v {
		t.Errorf("readOnlyRootFilesystem = %s, want true", show(csc.ReadOnlyRootFilesystem))
	}
	if v, _ := deref(csc.Privileged); v {
		t.Errorf("privileged = true, want false")
	}
	if caps := csc.Capabilities; caps == nil || !slices.Contains(caps.Drop, "ALL") || len(caps.Add) > 0 {
		t.Errorf("capabilities = %+v, want drop [ALL] and nothing added", caps)
	}
	if ps.HostNetwork || ps.HostPID || ps.HostIPC {
		t.Errorf("hostNetwork/hostPID/hostIPC = %v/%v/%v, want all false", ps.HostNetwork, ps.HostPID, ps.HostIPC)
	}
	if g, ok := deref(ps.TerminationGracePeriodSeconds); !ok || g < 30 {
		t.Errorf("terminationGracePeriodSeconds = %s, want >= 30 (a page plus the 10 s stop grace)", show(ps.TerminationGracePeriodSeconds))
	}
	// IRSA needs the ServiceAccount's token machinery; false must not sneak in.
	if v, ok := deref(ps.AutomountServiceAccountToken); ok && !v {
		t.Errorf("automountServiceAccountToken = false, want true (IRSA)")
	}
}

func TestResources(t *testing.T) {
	m := loadManifests(t)
	c := container(t, m.job)
	mem, ok := c.Resources.Limits[corev1.ResourceMemory]
	if max := resource.MustParse("256Mi"); !ok || mem.Cmp(max) > 0 {
		t.Errorf("memory limit = %v (set: %v), want set and <= 256Mi", mem.String(), ok)
	}
	if cpu, ok := c.Resources.Requests[corev1.ResourceCPU]; !ok || cpu.Cmp(resource.MustParse("500m")) != 0 {
		t.Errorf("cpu request = %v (set: %v), want 500m", cpu.String(), ok)
	}
	if req, ok := c.Resources.Requests[corev1.ResourceMemory]; ok && req.Cmp(mem) > 0 {
		t.Errorf("memory request %v exceeds the limit %v", req.String(), mem.String())
	}
}

func envVar(c *corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

func TestContainerEnvironment(t *testing.T) {
	m := loadManifests(t)
	c := container(t, m.job)

	if !slices.Equal(c.Args, []string{"run"}) {
		t.Errorf("args = %q, want [run]", c.Args)
	}
	if !strings.HasPrefix(c.Image, "ghcr.io/example/reencrypt:") || strings.HasSuffix(c.Image, ":latest") {
		t.Errorf("image = %q, want ghcr.io/example/reencrypt:{version} or a version, not :latest", c.Image)
	}

	fromCM := false
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef != nil && ef.ConfigMapRef.Name == configMapName {
			fromCM = true
		}
		if ef.SecretRef != nil {
			t.Errorf("envFrom secretRef %q, want the secret's single key through env only", ef.SecretRef.Name)
		}
	}
	if !fromCM {
		t.Errorf("envFrom = %+v, want a configMapRef to %q", c.EnvFrom, configMapName)
	}

	db := envVar(c, "DATABASE_URL")
	switch {
	case db == nil:
		t.Error("DATABASE_URL not in env, want it from a secretKeyRef")
	case db.Value != "":
		t.Error("DATABASE_URL has a literal value, want it from a secretKeyRef")
	case db.ValueFrom == nil || db.ValueFrom.SecretKeyRef == nil:
		t.Errorf("DATABASE_URL valueFrom = %+v, want a secretKeyRef", db.ValueFrom)
	default:
		ref := db.ValueFrom.SecretKeyRef
		if ref.Name != dbSecretName || ref.Key != dbSecretKey {
			t.Errorf("DATABASE_URL from secret %q key %q, want secret %q key %q", ref.Name, ref.Key, dbSecretName, dbSecretKey)
		}
		if v, _ := deref(ref.Optional); v {
			t.Error("DATABASE_URL secretKeyRef is optional, want required")
		}
	}

	si := envVar(c, "SHARD_INDEX")
	switch {
	case si == nil:
		t.Error("SHARD_INDEX not in env, want it from the downward API")
	case si.ValueFrom == nil || si.ValueFrom.FieldRef == nil:
		t.Errorf("SHARD_INDEX = %+v, want a downward API fieldRef", si)
	case si.ValueFrom.FieldRef.FieldPath != completionIndexFP:
		t.Errorf("SHARD_INDEX fieldPath = %q, want %q", si.ValueFrom.FieldRef.FieldPath, completionIndexFP)
	}

	// In env, not only envFrom: the IRSA webhook injects AWS_REGION unless env has it.
	if r := envVar(c, "AWS_REGION"); r == nil || r.ValueFrom == nil || r.ValueFrom.ConfigMapKeyRef == nil ||
		r.ValueFrom.ConfigMapKeyRef.Name != configMapName {
		t.Errorf("AWS_REGION = %+v, want env from configMapKeyRef %q", r, configMapName)
	}

	// Nothing secret in the ConfigMap.
	for k := range m.cm.Data {
		if k == "DATABASE_URL" || strings.Contains(k, "PASSWORD") || strings.Contains(k, "SECRET") {
			t.Errorf("ConfigMap holds %q, want secrets only in the Secret %q", k, dbSecretName)
		}
	}
}

func TestServiceAccountHasIRSARole(t *testing.T) {
	m := loadManifests(t)
	arn, ok := m.sa.Annotations[irsaAnnotation]
	if !ok {
		t.Fatalf("ServiceAccount annotations = %v, want %s", m.sa.Annotations, irsaAnnotation)
	}
	if want := regexp.MustCompile(`^arn:aws:iam::(<ACCOUNT_ID>|\d{12}):role/reencrypt$`); !want.MatchString(arn) {
		t.Errorf("%s = %q, want it to match %s", irsaAnnotation, arn, want)
	}
}

func TestConfigMapMatchesJob(t *testing.T) {
	m := loadManifests(t)
	data := m.cm.Data
	for _, k := range []string{"OLD_KEY_ID", "NEW_KEY_ID", "BATCH_SIZE", "SHARD_COUNT", "MODE", "NAMESPACE", "KMS_RATE_LIMIT", "METRICS_ADDR"} {
		if strings.TrimSpace(data[k]) == "" {
			t.Errorf("ConfigMap %s = %q, want set", k, data[k])
		}
	}
	if data["OLD_KEY_ID"] == data["NEW_KEY_ID"] {
		t.Errorf("OLD_KEY_ID and NEW_KEY_ID are both %q, want two keys", data["OLD_KEY_ID"])
	}
	if n, err := strconv.Atoi(data["BATCH_SIZE"]); err != nil || n <= 0 {
		t.Errorf("BATCH_SIZE = %q, want a positive integer", data["BATCH_SIZE"])
	}
	if r, err := strconv.ParseFloat(data["KMS_RATE_LIMIT"], 64); err != nil || r <= 0 {
		t.Errorf("KMS_RATE_LIMIT = %q, want a positive number (a budget, not unlimited)", data["KMS_RATE_LIMIT"])
	}
	if mode := data["MODE"]; mode != "rekey" && mode != "rewrap" {
		t.Errorf("MODE = %q, want rekey or rewrap", mode)
	} else if _, err := os.Stat("iam-policy-" + mode + ".json"); err != nil {
		t.Errorf("MODE = %q but its IAM policy is missing: %v", mode, err)
	}

	shards, err := strconv.Atoi(data["SHARD_COUNT"])
	completions, _ := deref(m.job.Spec.Completions)
	parallelism, _ := deref(m.job.Spec.Parallelism)
	if err != nil || int32(shards) != completions || int32(shards) != parallelism {
		t.Errorf("SHARD_COUNT = %q, want it equal to completions (%s) and parallelism (%s)",
			data["SHARD_COUNT"], show(m.job.Spec.Completions), show(m.job.Spec.Parallelism))
	}

	// METRICS_ADDR, the container port and the scrape annotation agree.
	_, port, err := net.SplitHostPort(data["METRICS_ADDR"])
	if err != nil {
		t.Fatalf("METRICS_ADDR = %q: %v", data["METRICS_ADDR"], err)
	}
	c := container(t, m.job)
	var metricsPort int32
	for _, p := range c.Ports {
		if p.Name == "metrics" {
			metricsPort = p.ContainerPort
		}
	}
	if strconv.Itoa(int(metricsPort)) != port {
		t.Errorf("container port `metrics` = %d, want METRICS_ADDR's port %s", metricsPort, port)
	}
	ann := m.job.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != port {
		t.Errorf("scrape annotations = %v, want prometheus.io/scrape \"true\" and prometheus.io/port %q", ann, port)
	}
}

// ---------------------------------------------------------------------------
// IAM policies.

// stringList is an IAM element that is either one string or a list of them.
type stringList []string

func (s *stringList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = stringList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("want a string or a list of strings, got %s", b)
	}
	if len(many) == 0 {
		return errors.New("empty list")
	}
	*s = many
	return nil
}

// The subset of the IAM policy grammar these identity policies may use. An
// element outside it (Principal, NotAction, NotResource, a misspelling) is an
// unknown field and fails the decode.
type policy struct {
	Version   string      `json:"Version"`
	Statement []statement `json:"Statement"`
}

type statement struct {
	Sid       string                           `json:"Sid"`
	Effect    string                           `json:"Effect"`
	Action    stringList                       `json:"Action"`
	Resource  stringList                       `json:"Resource"`
	Condition map[string]map[string]stringList `json:"Condition"`
}

var (
	policyKeys    = []string{"Version", "Statement"}
	statementKeys = []string{"Sid", "Effect", "Action", "Resource", "Condition"}
)

// exactKeys refuses keys that encoding/json would accept case-insensitively
// ("effect" for "Effect"); IAM element names are case-sensitive.
func exactKeys(raw json.RawMessage, allowed []string) error {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil {
		return err
	}
	for k := range keys {
		if !slices.Contains(allowed, k) {
			return fmt.Errorf("element %q, want one of %v (case-sensitive)", k, allowed)
		}
	}
	return nil
}

func decodePolicy(data []byte) (*policy, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p policy
	if err := dec.Decode(&p); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the policy")
	}
	if err := exactKeys(data, policyKeys); err != nil {
		return nil, err
	}
	var raw struct{ Statement []json.RawMessage }
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, err
	}
	for i, s := range raw.Statement {
		if err := exactKeys(s, statementKeys); err != nil {
			return nil, fmt.Errorf("statement %d: %w", i, err)
		}
	}
	return &p, nil
}

func loadPolicy(t *testing.T, name string) *policy {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	p, err := decodePolicy(data)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return p
}

// glob matches an IAM pattern (* and ?) against s.
func glob(pattern, s string, caseInsensitive bool) bool {
	re := regexp.QuoteMeta(pattern)
	re = strings.ReplaceAll(re, `\*`, `.*`)
	re = strings.ReplaceAll(re, `\?`, `.`)
	if caseInsensitive {
		re = "(?i)" + re
	}
	return regexp.MustCompile("^" + re + "$").MatchString(s)
}

func (s statement) allowsAction(action string) bool {
	return s.Effect == "Allow" && slices.ContainsFunc(s.Action, func(p string) bool { return glob(p, action, true) })
}

// grants reports whether some Allow statement of p grants action on the key
// arn (conditions aside).
func (p *policy) grants(action, arn string) bool {
	for _, s := range p.Statement {
		if s.allowsAction(action) && slices.ContainsFunc(s.Resource, func(r string) bool { return glob(r, arn, false) }) {
			return true
		}
	}
	return false
}

// The KMS actions that take an encryption context, so that
// kms:EncryptionContext:<key> conditions apply to them. DescribeKey and
// ScheduleKeyDeletion do not: a StringEquals on a key that is never present
// would make their statement deny everything.
var contextActions = []string{
	"kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext",
	"kms:GenerateDataKeyPair", "kms:GenerateDataKeyPairWithoutPlaintext",
	"kms:ReEncryptFrom", "kms:ReEncryptTo",
}

type grant struct {
	action, arn string
	want        bool
}

func TestIAMPolicies(t *testing.T) {
	m := loadManifests(t)
	namespace := m.cm.Data["NAMESPACE"]
	if namespace == "" {
		t.Fatal("ConfigMap NAMESPACE is empty")
	}

	cases := []struct {
		file   string
		grants []grant
	}{
		{"iam-policy-rekey.json", []grant{
			{"kms:DescribeKey", oldKeyARN, true},
			{"kms:DescribeKey", newKeyARN, true},
			{"kms:Decrypt", oldKeyARN, true},
			{"kms:Decrypt", newKeyARN, true}, // preflight round trip, verify
			{"kms:GenerateDataKey", newKeyARN, true},
			{"kms:GenerateDataKey", oldKeyARN, false},
			{"kms:Encrypt", oldKeyARN, false},
			{"kms:Encrypt", newKeyARN, false},
			{"kms:ScheduleKeyDeletion", oldKeyARN, false},
		}},
		{"iam-policy-rewrap.json", []grant{
			{"kms:DescribeKey", oldKeyARN, true},
			{"kms:DescribeKey", newKeyARN, true},
			{"kms:ReEncryptFrom", oldKeyARN, true},
			{"kms:ReEncryptTo", newKeyARN, true},
			{"kms:ReEncryptFrom", newKeyARN, false},
			{"kms:ReEncryptTo", oldKeyARN, false},
			{"kms:Decrypt", oldKeyARN, false}, // rewrap never holds an OLD data key
			{"kms:Decrypt", newKeyARN, true},  // preflight round trip, verify
			{"kms:GenerateDataKey", newKeyARN, true},
			{"kms:GenerateDataKey", oldKeyARN, false},
			{"kms:ScheduleKeyDeletion", oldKeyARN, false},
		}},
		{"iam-policy-keys-admin.json", []grant{
			{"kms:ScheduleKeyDeletion", oldKeyARN, true},
			{"kms:DescribeKey", oldKeyARN, true},
			{"kms:CancelKeyDeletion", oldKeyARN, true}, // rows appeared during the call: undo it
			{"kms:EnableKey", oldKeyARN, true},
			{"kms:ScheduleKeyDeletion", newKeyARN, false},
			{"kms:CancelKeyDeletion", newKeyARN, false},
			{"kms:DescribeKey", newKeyARN, false},
			{"kms:Decrypt", oldKeyARN, false},
			{"kms:GenerateDataKey", newKeyARN, false},
			{"kms:ReEncryptFrom", oldKeyARN, false},
			{"kms:ReEncryptTo", newKeyARN, false},
		}},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			p := loadPolicy(t, c.file)
			if p.Version != "2012-10-17" {
				t.Errorf("Version = %q, want 2012-10-17", p.Version)
			}
			if len(p.Statement) == 0 {
				t.Fatal("no statements")
			}
			checkStatements(t, p, namespace)
			for _, g := range c.grants {
				if got := p.grants(g.action, g.arn); got != g.want {
					t.Errorf("grants %s on %s = %v, want %v", g.action, g.arn, got, g.want)
				}
			}
		})
	}

	// Whatever the resource: rekey never re-encrypts through KMS.
	rekey := loadPolicy(t, "iam-policy-rekey.json")
	for i, s := range rekey.Statement {
		for _, a := range []string{"kms:ReEncryptFrom", "kms:ReEncryptTo"} {
			if s.allowsAction(a) {
				t.Errorf("rekey statement %d (%s) allows %s, want no ReEncrypt*", i, s.Sid, a)
			}
		}
	}
}

// checkStatements asserts the properties every statement of every policy
// shares: explicit Allow, no wildcard action or resource, only the OLD and
// NEW key ARNs, and the encryption-context condition exactly on the actions
// that support it.
func checkStatements(t testing.TB, p *policy, namespace string) {
	t.Helper()
	sids := map[string]bool{}
	alnum := regexp.MustCompile(`^[A-Za-z0-9]+$`)
	for i, s := range p.Statement {
		name := fmt.Sprintf("statement %d (%s)", i, s.Sid)
		if !alnum.MatchString(s.Sid) || sids[s.Sid] {
			t.Errorf("%s: Sid must be alphanumeric and unique", name)
		}
		sids[s.Sid] = true
		if s.Effect != "Allow" {
			t.Errorf("%s: Effect = %q, want Allow", name, s.Effect)
		}
		if len(s.Action) == 0 || len(s.Resource) == 0 {
			t.Errorf("%s: Action %v, Resource %v, want both set", name, s.Action, s.Resource)
		}
		for _, a := range s.Action {
			if a == "kms:*" || strings.ContainsAny(a, "*?") {
				t.Errorf("%s: Action %q, want no wildcard", name, a)
			}
			if !strings.HasPrefix(a, "kms:") {
				t.Errorf("%s: Action %q, want kms actions only", name, a)
			}
		}
		for _, r := range s.Resource {
			if r == "*" || strings.ContainsAny(r, "*?") {
				t.Errorf("%s: Resource %q, want no wildcard", name, r)
			}
			if r != oldKeyARN && r != newKeyARN {
				t.Errorf("%s: Resource %q, want only %s or %s", name, r, oldKeyARN, newKeyARN)
			}
		}

		ctxActions, otherActions := 0, 0
		for _, a := range s.Action {
			if slices.ContainsFunc(contextActions, func(c string) bool { return strings.EqualFold(a, c) }) {
				ctxActions++
			} else {
				otherActions++
			}
		}
		if ctxActions > 0 && otherActions > 0 {
			t.Errorf("%s: mixes actions with and without encryption context %v; a context condition would block the others", name, s.Action)
		}
		var ctxKeys []string
		for _, keys := range s.Condition {
			for k := range keys {
				if strings.HasPrefix(strings.ToLower(k), "kms:encryptioncontext") {
					ctxKeys = append(ctxKeys, k)
				}
			}
		}
		if ctxActions > 0 {
			got := s.Condition["StringEquals"]["kms:EncryptionContext:namespace"]
			if !slices.Equal(got, stringList{namespace}) {
				t.Errorf("%s: StringEquals kms:EncryptionContext:namespace = %v, want [%s] (ConfigMap NAMESPACE)", name, got, namespace)
			}
		} else if len(ctxKeys) > 0 {
			t.Errorf("%s: %v carry encryption-context conditions %v, which they do not support", name, s.Action, ctxKeys)
		}
	}
}

func TestDecodePolicyIsStrict(t *testing.T) {
	good := `{"Version":"2012-10-17","Statement":[{"Sid":"A","Effect":"Allow","Action":"kms:Decrypt","Resource":"x"}]}`
	if _, err := decodePolicy([]byte(good)); err != nil {
		t.Fatalf("a valid policy was rejected: %v", err)
	}
	for name, bad := range map[string]string{
		"misspelt element": strings.Replace(good, `"Resource"`, `"Resources"`, 1),
		"NotAction":        strings.Replace(good, `"Action"`, `"NotAction"`, 1),
		"wrong case":       strings.Replace(good, `"Effect"`, `"effect"`, 1),
		"trailing data":    good + `{}`,
		"empty list":       strings.Replace(good, `"kms:Decrypt"`, `[]`, 1),
	} {
		if _, err := decodePolicy([]byte(bad)); err == nil {
			t.Errorf("%s: decodePolicy accepted %s, want an error", name, bad)
		}
	}
}

// The checks themselves must be able to fail: a policy that breaks each rule.
func TestPolicyChecksCatchBadPolicies(t *testing.T) {
	bad := &policy{Version: "2012-10-17", Statement: []statement{
		{Sid: "Wild", Effect: "Allow", Action: stringList{"kms:*"}, Resource: stringList{"*"}},
	}}
	for _, g := range []grant{
		{"kms:ReEncryptFrom", oldKeyARN, true},
		{"kms:Decrypt", oldKeyARN, true},
		{"kms:ScheduleKeyDeletion", newKeyARN, true},
	} {
		if got := bad.grants(g.action, g.arn); got != g.want {
			t.Errorf("wildcard policy: grants %s on %s = %v, want %v", g.action, g.arn, got, g.want)
		}
	}
	ft := &fakeT{}
	checkStatements(ft, bad, "payment_methods")
	if len(ft.errors) == 0 {
		t.Error("checkStatements passed a kms:* on * policy, want errors")
	}

	noCtx := &policy{Version: "2012-10-17", Statement: []statement{
		{Sid: "NoContext", Effect: "Allow", Action: stringList{"kms:Decrypt"}, Resource: stringList{oldKeyARN}},
	}}
	ft = &fakeT{}
	checkStatements(ft, noCtx, "payment_methods")
	if len(ft.errors) == 0 {
		t.Error("checkStatements passed a Decrypt without encryption-context condition, want an error")
	}
}

// fakeT lets a check run against a policy that must fail it.
type fakeT struct {
	testing.TB
	errors []string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Errorf(format string, a ...any) {
	f.errors = append(f.errors, fmt.Sprintf(format, a...))
}
