package kmsclient

import "golang.org/x/time/rate"

// TokenBudget returns a fixed budget that lets exactly n attempts through
// and then never refills: a Wait with a deadline fails at once. Counting
// what got through tells whether every attempt waited on the budget,
// without timing anything.
func TokenBudget(n int) *Budget {
	b := NewBudget(0, 1).Fixed()
	b.limiter = rate.NewLimiter(0, n)
	return b
}

// ThroughTransport makes a direct-path api send through the SDK's
// http.Transport instead of its own connections (as when a proxy applies),
// so a test or benchmark can compare the two; it reports whether api is
// the direct path.
func ThroughTransport(api KMS) bool {
	d, ok := api.(*directKMS)
	if ok {
		d.conns = nil
	}
	return ok
}
