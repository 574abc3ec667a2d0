package faults

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/reencrypt/reencrypt/internal/kmsfault"
)

// logLines decodes the JSON log lines a process wrote to stderr.
func (p *proc) logLines() []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(p.stderr.String()))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// failure is the "err" of the process's final "reencrypt run failed" line.
func (p *proc) failure() string {
	for _, l := range p.logLines() {
		if msg, _ := l["msg"].(string); strings.HasSuffix(msg, " failed") {
			s, _ := l["err"].(string)
			return s
		}
	}
	return ""
}

// count is how many log lines have msg containing substr.
func (p *proc) count(substr string) int {
	n := 0
	for _, l := range p.logLines() {
		if msg, _ := l["msg"].(string); strings.Contains(msg, substr) {
			n++
		}
	}
	return n
}

type keyChange struct {
	name    string
	key     func(w *world) (arn string)
	apply   func(t *testing.T, w *world)
	restore func(t *testing.T, w *world)
}

func kmsDo(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// Scenario 4: a key becomes unusable in the middle of a run. The run must
// stop within one page (per range worker), write no partial page, exit 77
// and name the key; once the key is usable again a rerun finishes.
func TestKeyStateChanges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	disable := func(arn func(*world) string) func(*testing.T, *world) {
		return func(t *testing.T, w *world) {
			_, err := w.API.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(arn(w))})
			kmsDo(t, "DisableKey", err)
		}
	}
	enable := func(arn func(*world) string) func(*testing.T, *world) {
		return func(t *testing.T, w *world) {
			_, err := w.API.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(arn(w))})
			kmsDo(t, "EnableKey", err)
		}
	}
	oldKey := func(w *world) string { return w.Old.ARN }
	newKey := func(w *world) string { return w.New.ARN }
	changes := []keyChange{
		{name: "OLD disabled", key: oldKey, apply: disable(oldKey), restore: enable(oldKey)},
		{name: "NEW disabled", key: newKey, apply: disable(newKey), restore: enable(newKey)},
		{name: "NEW scheduled for deletion", key: newKey,
			apply: func(t *testing.T, w *world) {
				_, err := w.API.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(w.New.ARN), PendingWindowInDays: aws.Int32(7)})
				kmsDo(t, "ScheduleKeyDeletion", err)
			},
			restore: func(t *testing.T, w *world) {
				_, err := w.API.CancelKeyDeletion(ctx, &kms.CancelKeyDeletionInput{KeyId: aws.String(w.New.ARN)})
				kmsDo(t, "CancelKeyDeletion", err)
				enable(newKey)(t, w)
			}},
		{name: "OLD access denied", key: oldKey,
			apply:   func(t *testing.T, w *world) { w.proxy.Set(kmsfault.Faults{Deny: []string{w.Old.ARN, w.Old.ID}}) },
			restore: func(t *testing.T, w *world) { w.proxy.Set(kmsfault.Faults{}) }},
		{name: "NEW access denied", key: newKey,
			apply:   func(t *testing.T, w *world) { w.proxy.Set(kmsfault.Faults{Deny: []string{w.New.ARN, w.New.ID}}) },
			restore: func(t *testing.T, w *world) { w.proxy.Set(kmsfault.Faults{}) }},
	}
	n := pick(2000, 20_000)
	for _, c := range changes {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			scen := fmt.Sprintf("4 key: %s mid-run (%d rows)", c.name, n)
			w := newWorld(t, worldOpts{})
			w.Seed(n, w.Old, 1)
			extra := []string{"KMS_RATE_LIMIT=" + pick("600", "3000")}
			p := w.start("keychange", extra...)
			waitFor(t, "three committed pages", time.Minute, func() bool { return w.pages() >= 3 || p.exited() })
			if p.exited() {
				t.Fatalf("run ended before the key change: %s", p.status())
			}
			changed := time.Now()
			c.apply(t, w)
			// Count from when the change is known to be in effect: a page
			// that committed while the KMS admin call was still in flight
			// began under a usable key and is not "after the change".
			pagesBefore := w.pages()
			p.wait(t, 2*time.Minute)
			stopped := p.ended.Sub(changed)

			figure(t, scen, "exit code", "77 (key unusable)", p.status(), p.signal == 0 && p.code == exitKeyUnusable)
			msg := p.failure()
			arn := c.key(w)
			figure(t, scen, "error message names the key ARN", "contains "+arn, tail(msg, 300), strings.Contains(msg, arn))
			after := w.pages() - pagesBefore
			figure(t, scen, "pages committed after the change", "<= 2 (the page in flight of each of RANGE_WORKERS=2)",
				fmt.Sprintf("%d (stopped %s after the change)", after, stopped.Round(time.Millisecond)), after <= 2)
			w.checkAtomic(scen)

			c.restore(t, w)
			w.runToEnd("after-restore", 3, 5*time.Minute, extra...)
			w.checkDone(scen+", then key restored and rerun", int64(n))
		})
	}
}
