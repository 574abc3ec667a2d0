package cli

import (
	"runtime/debug"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// Garbage-collector defaults for the engine, used unless GOGC or GOMEMLIMIT
// is set. The engine's live heap is small and flat (two pages, the data-key
// cache, the KMS requests in flight), but the AWS SDK allocates heavily on
// every request, so at Go's default GOGC=100 the collector ran many times a
// second and took about a quarter of the process's CPU in a rekey (bench
// -cpuprofile); on legacy data, where each row costs one KMS request, that
// CPU is rows per second. A higher GOGC under a soft memory limit spends
// memory the engine has room for instead.
//
// The soft limit follows the container: 90 % of its cgroup memory limit
// (the pod's resources.limits.memory), leaving the rest for what the Go
// runtime does not count (stacks in use by cgo, the binary's text, kernel
// buffers charged to the cgroup), so the collector works harder before the
// kernel's OOM killer would. Without a cgroup limit (a laptop, a pod with no
// limit) it is the benchmark's measured default, a little under its 100 MB
// RSS target. GOMEMLIMIT in the environment always wins.
const (
	defaultGCPercent   = 400
	defaultMemoryLimit = 72 << 20 // bytes, when the container sets no limit
	cgroupLimitRatio   = 0.9
)

// tuneGC applies the defaults above, each unless its variable is set in
// env (the runtime has then applied the user's value already). The cgroup
// limit is read by automemlimit's reader (cgroup v1 and v2, the process's
// own cgroup found through /proc/self/mountinfo).
func tuneGC(env map[string]string) {
	tuneGCWith(env, memlimit.FromCgroup)
}

// tuneGCWith is tuneGC with the container's limit read by limit; it
// returns the soft memory limit it set (0 when GOMEMLIMIT was left alone).
func tuneGCWith(env map[string]string, limit memlimit.Provider) int64 {
	if _, set := env["GOGC"]; !set {
		debug.SetGCPercent(defaultGCPercent)
	}
	if _, set := env["GOMEMLIMIT"]; set {
		return 0
	}
	soft := memoryLimit(limit)
	debug.SetMemoryLimit(soft)
	return soft
}

// memoryLimit is 90 % of what limit reports, or defaultMemoryLimit when it
// reports no limit or cannot be read (not Linux, no cgroup mounted).
func memoryLimit(limit memlimit.Provider) int64 {
	n, err := limit()
	if err != nil || n == 0 {
		return defaultMemoryLimit
	}
	soft := float64(n) * cgroupLimitRatio
	if soft >= float64(1<<62) { // "max" in a cgroup is no limit at all
		return defaultMemoryLimit
	}
	return int64(soft)
}
