package cli

import (
	"math"
	"runtime/debug"
	"testing"
)

// gcSettings reads the runtime's GOGC and soft memory limit without
// changing them.
func gcSettings() (percent int, limit int64) {
	percent = debug.SetGCPercent(100)
	debug.SetGCPercent(percent)
	return percent, debug.SetMemoryLimit(-1)
}

func TestGCDefaultsYieldToTheEnvironment(t *testing.T) {
	percent0, limit0 := gcSettings()
	t.Cleanup(func() { debug.SetGCPercent(percent0); debug.SetMemoryLimit(limit0) })
	reset := func() { debug.SetGCPercent(100); debug.SetMemoryLimit(math.MaxInt64) }

	reset()
	tuneGC(map[string]string{})
	if p, l := gcSettings(); p != defaultGCPercent || l != defaultMemoryLimit {
		t.Errorf("no GOGC/GOMEMLIMIT: got GOGC %d, limit %d; want both defaults applied (%d, %d)", p, l, defaultGCPercent, defaultMemoryLimit)
	}
	reset()
	tuneGC(map[string]string{"GOGC": "100"})
	if p, l := gcSettings(); p != 100 || l != defaultMemoryLimit {
		t.Errorf("GOGC set: got GOGC %d, limit %d; want GOGC left at 100, limit %d", p, l, defaultMemoryLimit)
	}
	reset()
	tuneGC(map[string]string{"GOMEMLIMIT": "1GiB"})
	if p, l := gcSettings(); p != defaultGCPercent || l != math.MaxInt64 {
		t.Errorf("GOMEMLIMIT set: got GOGC %d, limit %d; want GOGC %d, limit left alone", p, l, defaultGCPercent)
	}
}
