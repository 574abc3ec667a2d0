package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"
)

// timelineStep is how often the timeline samples the KMS counters.
const timelineStep = 250 * time.Millisecond

// tick is one timelineStep of KMS traffic through the quota proxy: what the
// engine and the API sent, and how much of each was throttled.
type tick struct {
	AtS             float64 `json:"at_s"` // seconds into the phase, at the tick's end
	EngineReqs      int64   `json:"engine_requests"`
	EngineThrottled int64   `json:"engine_throttled"`
	APIReqs         int64   `json:"api_requests"`
	APIThrottled    int64   `json:"api_throttled"`
}

// timeline samples the proxy's and the API's counters every timelineStep,
// so that an API error can be set against what the engine was doing then.
type timeline struct {
	w  *world
	mu sync.Mutex
	at []time.Time
	c  [][4]int64 // proxy total, proxy throttled, API attempts, API throttled
}

func (t *timeline) run(ctx context.Context) {
	tk := time.NewTicker(timelineStep)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tk.C:
			c := [4]int64{t.w.proxy.Total(), t.w.proxy.Throttled(), t.w.api.attempts.Load(), t.w.api.throttled.Load()}
			t.mu.Lock()
			t.at, t.c = append(t.at, now), append(t.c, c)
			t.mu.Unlock()
		}
	}
}

// window returns the ticks that end in (from, to].
func (t *timeline) window(from, to time.Time) []tick {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []tick
	for i := 1; i < len(t.at); i++ {
		if !t.at[i].After(from) || t.at[i].After(to) {
			continue
		}
		d := func(k int) int64 { return t.c[i][k] - t.c[i-1][k] }
		out = append(out, tick{AtS: t.at[i].Sub(from).Seconds(),
			EngineReqs: d(0) - d(2), EngineThrottled: d(1) - d(3), APIReqs: d(2), APIThrottled: d(3)})
	}
	return out
}

// around prints the ticks within span of at as "t: engine req/s (throttled
// %) / API throttled", the context of one API error.
func around(ticks []tick, at, span float64) string {
	var b strings.Builder
	for _, k := range ticks {
		if k.AtS < at-span || k.AtS > at+span {
			continue
		}
		pc := 0.0
		if k.EngineReqs > 0 {
			pc = 100 * float64(k.EngineThrottled) / float64(k.EngineReqs)
		}
		fmt.Fprintf(&b, "\n    %5.2f s: engine %4.0f req/s, %3.0f %% throttled; API %d/%d throttled",
			k.AtS, float64(k.EngineReqs)/timelineStep.Seconds(), pc, k.APIThrottled, k.APIReqs)
	}
	return b.String()
}
