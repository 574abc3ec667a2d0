package cli

import (
	"errors"
	"math"
	"runtime/debug"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"
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
	noLimit := func() (uint64, error) { return 0, memlimit.ErrNoLimit }
	pod := func() (uint64, error) { return 512 << 20, nil }

	reset()
	tuneGCWith(map[string]string{}, noLimit)
	if p, l := gcSettings(); p != defaultGCPercent || l != defaultMemoryLimit {
		t.Errorf("no GOGC/GOMEMLIMIT, no cgroup limit: got GOGC %d, limit %d; want both defaults applied (%d, %d)", p, l, defaultGCPercent, defaultMemoryLimit)
	}
	reset()
	tuneGCWith(map[string]string{"GOGC": "100"}, pod)
	if p, l := gcSettings(); p != 100 || l != 483183820 {
		t.Errorf("GOGC set, 512 MiB pod: got GOGC %d, limit %d; want GOGC left at 100, limit 90 %% of the pod's (483183820)", p, l)
	}
	reset()
	called := false
	tuneGCWith(map[string]string{"GOMEMLIMIT": "1GiB"}, func() (uint64, error) { called = true; return 512 << 20, nil })
	if p, l := gcSettings(); p != defaultGCPercent || l != math.MaxInt64 {
		t.Errorf("GOMEMLIMIT set: got GOGC %d, limit %d; want GOGC %d, limit left alone", p, l, defaultGCPercent)
	}
	if called {
		t.Error("GOMEMLIMIT set, but the cgroup limit was read anyway")
	}
}

// TestMemoryLimitFollowsThePod: 90 % of the container's limit; the
// measured default when there is none or it cannot be read.
func TestMemoryLimitFollowsThePod(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit uint64
		err   error
		want  int64
	}{
		{"128 MiB pod", 128 << 20, nil, 120795955},
		{"1 GiB pod", 1 << 30, nil, 966367641},
		{"64 MiB pod, under the default", 64 << 20, nil, 60397977},
		{"no limit (cgroup max)", 0, memlimit.ErrNoLimit, defaultMemoryLimit},
		{"no cgroup (not Linux, not mounted)", 0, memlimit.ErrCgroupsNotSupported, defaultMemoryLimit},
		{"unreadable", 0, errors.New("permission denied"), defaultMemoryLimit},
		{"absurd limit", math.MaxUint64, nil, defaultMemoryLimit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := memoryLimit(func() (uint64, error) { return tc.limit, tc.err })
			if got != tc.want {
				t.Errorf("memoryLimit = %d, want %d", got, tc.want)
			}
		})
	}
}

// TestFromCgroupReadsThisMachine runs the real reader once: whatever this
// machine has, the result is a limit or one of the errors memoryLimit
// treats as "no limit", never a panic.
func TestFromCgroupReadsThisMachine(t *testing.T) {
	n, err := memlimit.FromCgroup()
	t.Logf("cgroup memory limit here: %d (%v); soft limit would be %d", n, err, memoryLimit(memlimit.FromCgroup))
	if err == nil && n == 0 {
		t.Error("FromCgroup reported a zero limit without an error")
	}
}
