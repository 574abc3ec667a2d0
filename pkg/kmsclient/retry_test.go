package kmsclient

import (
	"errors"
	"testing"
	"time"

	"github.com/aws/smithy-go"
)

// The retry delays the engine lives with: a throttled attempt is retried
// within 50 ms (the budget does the slowing down), and every other error
// keeps the SDK's own backoff, whose first retry waits under 50 ms since
// the SDK's 2026 retry behaviour. A wrapper that fell back to the legacy
// backoff (up to 2 s on the first retry) ran the 5xx soak at a twentieth
// of its speed.
func TestRetryDelays(t *testing.T) {
	r := newRetryer(8, 5*time.Second)
	cases := []struct {
		name    string
		err     error
		attempt int
		max     time.Duration
	}{
		{"throttled, first retry", &smithy.GenericAPIError{Code: "ThrottlingException"}, 1, 51 * time.Millisecond},
		{"throttled, fourth retry", &smithy.GenericAPIError{Code: "ThrottlingException"}, 4, 401 * time.Millisecond},
		{"throttled, capped", &smithy.GenericAPIError{Code: "ThrottlingException"}, 20, 5*time.Second + time.Millisecond},
		{"5xx, first retry", &smithy.GenericAPIError{Code: "KMSInternalException"}, 1, 50 * time.Millisecond},
		{"5xx, third retry", &smithy.GenericAPIError{Code: "KMSInternalException"}, 3, 200 * time.Millisecond},
		{"transport, first retry", errors.New("connection reset by peer"), 1, 50 * time.Millisecond},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var longest time.Duration
			for range 200 {
				d, err := r.RetryDelay(c.attempt, c.err)
				if err != nil {
					t.Fatal(err)
				}
				if d < 0 || d > c.max {
					t.Fatalf("RetryDelay(%d, %v) = %s, want within [0, %s]", c.attempt, c.err, d, c.max)
				}
				longest = max(longest, d)
			}
			// Jittered, not zero: 200 draws all under a tenth of the
			// ceiling would mean the delay was dropped.
			if longest < c.max/10 {
				t.Fatalf("longest of 200 delays %s, want some near %s", longest, c.max)
			}
		})
	}
	if got := r.MaxAttempts(); got != 8 {
		t.Fatalf("MaxAttempts = %d, want 8", got)
	}
}
