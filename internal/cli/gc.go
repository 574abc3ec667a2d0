package cli

import (
	"runtime/debug"
)

// Garbage-collector defaults for the engine, used unless GOGC or GOMEMLIMIT
// is set. The engine's live heap is small and flat (two pages, the data-key
// cache, the KMS requests in flight), but the AWS SDK allocates heavily on
// every request, so at Go's default GOGC=100 the collector ran many times a
// second and took about a quarter of the process's CPU in a rekey (bench
// -cpuprofile); on legacy data, where each row costs one KMS request, that
// CPU is rows per second. A higher GOGC under a soft memory limit spends
// memory the engine has room for (its target is < 100 MB RSS) instead.
const (
	defaultGCPercent   = 400
	defaultMemoryLimit = 72 << 20 // bytes; the runtime's own, a little under the RSS target
)

// tuneGC applies the defaults above, each unless its variable is set in
// env (the runtime has then applied the user's value already).
func tuneGC(env map[string]string) {
	if _, set := env["GOGC"]; !set {
		debug.SetGCPercent(defaultGCPercent)
	}
	if _, set := env["GOMEMLIMIT"]; !set {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
}
