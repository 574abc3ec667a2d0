package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

func (r *report) phase(name string) *phaseReport {
	for i := range r.Phases {
		if r.Phases[i].Name == name {
			return &r.Phases[i]
		}
	}
	return nil
}

// judge checks the targets. Timings are judged only at full size; the
// smoke run checks what is deterministic.
func (r *report) judge(o options) {
	fail := func(format string, a ...any) { r.Failures = append(r.Failures, fmt.Sprintf(format, a...)) }
	for _, p := range r.Phases {
		// unpaced is the reference: what a rotation did before it shared.
		if p.API.Errors > 0 && p.Name != "unpaced" {
			msg := fmt.Sprintf("%s: %d API errors, want 0 (%s)", p.Name, p.API.Errors, p.API.failedList())
			if len(p.API.Failed) > 0 { // what KMS saw from 1 s before the first error to 4 s after
				msg += around(p.Timeline, p.API.Failed[0].AtS+1.5, 2.5)
			}
			fail("%s", msg)
		}
		if p.Name != "baseline" && p.LeftUnderOld != 0 {
			fail("%s: %d rows left under the key it rotated from, want 0", p.Name, p.LeftUnderOld)
		}
		for _, c := range p.Exit {
			if c != 0 {
				fail("%s: reencrypt exited %d", p.Name, c)
			}
		}
	}
	if p := r.phase("pause"); p != nil {
		if p.MovedWhilePaus != 0 {
			fail("pause: %d rows rotated while paused, want 0", p.MovedWhilePaus)
		}
		if p.PagesAfter > 2*3 { // two pods, RANGE_WORKERS pages in flight each
			fail("pause: %d pages committed after the pause, want at most the 6 in flight", p.PagesAfter)
		}
	}
	if o.smoke {
		return
	}
	base, gentle, unpaced := r.phase("baseline"), r.phase("gentle"), r.phase("unpaced")
	if base == nil || gentle == nil || unpaced == nil {
		return
	}
	if limit := 1.5*base.API.P99MS + 5; gentle.API.P99MS > limit {
		fail("gentle: API p99 %.1f ms, want at most 1.5 × baseline %.1f + 5 = %.1f ms", gentle.API.P99MS, base.API.P99MS, limit)
	}
	if gentle.LagMaxS > 1.5 {
		fail("gentle: replica lag reached %.2f s, want at most 1.5 s", gentle.LagMaxS)
	}
	if gentle.RowsPerS < 0.5*unpaced.RowsPerS {
		fail("gentle: %.0f rows/s, want at least half of unpaced %.0f", gentle.RowsPerS, unpaced.RowsPerS)
	}
	if gentle.APIThrottlePc > 2 {
		fail("gentle: the API's KMS requests were throttled %.2f %%, want at most 2 %%", gentle.APIThrottlePc)
	}
	if min := 0.85 * 0.7 * r.Quota; gentle.EngineKMSPerS < min {
		fail("gentle: engine sustained %.0f KMS requests/s, want at least 0.85 × 0.7 Q = %.0f", gentle.EngineKMSPerS, min)
	}
}

func (r *report) print(w io.Writer, o options) {
	fmt.Fprintf(w, "\nbench-online %s, %s: %d legacy rows per rotation, KMS quota %.0f/s, API %.0f req/s\n\n",
		r.Date, r.Machine, r.Rows, r.Quota, r.APIRate)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\tsettle s\tseconds\tAPI p50 ms\tp99 ms\tmax ms\terrors\tAPI KMS throttled %\tlag max s\tlag p99 s\trows/s\tengine KMS/s\t")
	for _, p := range r.Phases {
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%d\t%.2f\t%.2f\t%.2f\t%.0f\t%.0f\t\n", p.Name, p.SettleS, p.Seconds,
			p.API.P50MS, p.API.P99MS, p.API.MaxMS, p.API.Errors, p.APIThrottlePc, p.LagMaxS, p.LagP99S, p.RowsPerS, p.EngineKMSPerS)
	}
	tw.Flush()
	if p := r.phase("pause"); p != nil {
		fmt.Fprintf(w, "\npause: paused %.1f s and resumed %.1f s into the phase; ", p.PausedAtS, p.ResumedAtS)
		fmt.Fprintf(w, "last commit %.2f s after `reencrypt pause` returned, %d pages after it, %d rows moved while paused; "+
			"back to 80 %% of the pre-pause rate %.2f s after `resume`\n", p.PauseStopS, p.PagesAfter, p.MovedWhilePaus, p.ResumeFullS)
	}
}

// failedList says when each of a phase's API errors happened and what it was.
func (s apiStats) failedList() string {
	var b strings.Builder
	for i, f := range s.Failed {
		if i == 5 {
			fmt.Fprintf(&b, ", %d more", len(s.Failed)-i)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%.1f s: %s", f.AtS, f.Kind)
	}
	return b.String()
}
