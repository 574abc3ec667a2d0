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
