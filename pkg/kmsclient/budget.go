package kmsclient

import (
	"context"
	"errors"
	"math"
	"time"

	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	"golang.org/x/time/rate"
)

// Budget is the process's share of the cluster-wide KMS request rate. It is a
// token bucket that every HTTP attempt waits on, so retries count too.
type Budget struct {
	limiter *rate.Limiter
	perSec  float64
}

// NewBudget returns a budget of perSec requests per second for this process:
// clusterPerSec divided by the number of processes sharing it. A zero or
// negative rate means unlimited.
func NewBudget(clusterPerSec float64, processes int) *Budget {
	if processes < 1 {
		processes = 1
	}
	perSec := clusterPerSec / float64(processes)
	if perSec <= 0 {
		return &Budget{limiter: rate.NewLimiter(rate.Inf, 0), perSec: math.Inf(1)}
	}
	// A token bucket lets through refill×T + burst requests in any window T.
	// Refilling at perSec − 2·burst keeps every one-second window, the span
	// KMS quotas are measured on, a burst below perSec, which leaves room for
	// requests that leave here in one second and reach KMS in the next. A
	// burst of 2 % lets a page start without waiting.
	burst := max(1, int(perSec/50))
	refill := max(perSec-2*float64(burst), perSec/2)
	return &Budget{limiter: rate.NewLimiter(rate.Limit(refill), burst), perSec: perSec}
}

// PerSecond is the budget's rate; +Inf when unlimited.
func (b *Budget) PerSecond() float64 { return b.perSec }

// Wait blocks until one request may be sent.
func (b *Budget) Wait(ctx context.Context) error {
	if b == nil {
		return nil
	}
	return b.limiter.Wait(ctx)
}

// Concurrency is how many requests must be in flight to use the budget fully
// when one request takes latency: Little's law (rate × latency) with 50 %
// headroom, clamped to [minC, maxC]. An unlimited budget gets maxC.
func (b *Budget) Concurrency(latency time.Duration, minC, maxC int) int {
	if b == nil || math.IsInf(b.perSec, 1) {
		return maxC
	}
	n := int(math.Ceil(b.perSec * latency.Seconds() * 1.5))
	return min(max(n, minC), maxC)
}

// Observer is told about every KMS HTTP attempt: the operation name
// ("Decrypt", …), the result ("ok", "throttled" or the AWS error code, or
// "transport") and how long the attempt took.
type Observer func(operation, result string, took time.Duration)

// attemptMiddleware runs inside the SDK's retry loop, once per HTTP attempt:
// it waits for the budget, then reports the attempt to the observer.
func attemptMiddleware(budget *Budget, observe Observer) func(*middleware.Stack) error {
	return func(stack *middleware.Stack) error {
		return stack.Finalize.Add(middleware.FinalizeMiddlewareFunc("reencryptAttempt",
			func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
				if err := budget.Wait(ctx); err != nil {
					return middleware.FinalizeOutput{}, middleware.Metadata{}, err
				}
				start := time.Now()
				out, md, err := next.HandleFinalize(ctx, in)
				if observe != nil {
					observe(awsmiddleware.GetOperationName(ctx), resultOf(err), time.Since(start))
				}
				return out, md, err
			}), middleware.After)
	}
}

func resultOf(err error) string {
	if err == nil {
		return "ok"
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		if isThrottle(ae.ErrorCode()) {
			return "throttled"
		}
		return ae.ErrorCode()
	}
	return "transport"
}

func isThrottle(code string) bool {
	switch code {
	case "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded", "LimitExceededException":
		return true
	}
	return false
}
