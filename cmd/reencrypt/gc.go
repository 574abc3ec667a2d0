package main

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

// gcDefaults returns the settings to apply given the environment: a value
// is left alone (ok false) when its variable is set.
func gcDefaults(env map[string]string) (percent int, setPercent bool, limit int64, setLimit bool) {
	_, gogc := env["GOGC"]
	_, gomem := env["GOMEMLIMIT"]
	return defaultGCPercent, !gogc, defaultMemoryLimit, !gomem
}

func tuneGC(env map[string]string) {
	percent, setPercent, limit, setLimit := gcDefaults(env)
	if setPercent {
		debug.SetGCPercent(percent)
	}
	if setLimit {
		debug.SetMemoryLimit(limit)
	}
}
