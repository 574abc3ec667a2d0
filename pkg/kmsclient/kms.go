package kmsclient

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"
)

// KMS is the subset of *kms.Client that reencrypt calls, with the SDK's exact
// signatures.
type KMS interface {
	DescribeKey(ctx context.Context, in *kms.DescribeKeyInput, optFns ...func(*kms.Options)) (*kms.DescribeKeyOutput, error)
	GenerateDataKey(ctx context.Context, in *kms.GenerateDataKeyInput, optFns ...func(*kms.Options)) (*kms.GenerateDataKeyOutput, error)
	Decrypt(ctx context.Context, in *kms.DecryptInput, optFns ...func(*kms.Options)) (*kms.DecryptOutput, error)
	ReEncrypt(ctx context.Context, in *kms.ReEncryptInput, optFns ...func(*kms.Options)) (*kms.ReEncryptOutput, error)
	ScheduleKeyDeletion(ctx context.Context, in *kms.ScheduleKeyDeletionInput, optFns ...func(*kms.Options)) (*kms.ScheduleKeyDeletionOutput, error)
	// keys schedule-deletion undoes its own call when rows appear meanwhile,
	// and names the key's aliases before it.
	CancelKeyDeletion(ctx context.Context, in *kms.CancelKeyDeletionInput, optFns ...func(*kms.Options)) (*kms.CancelKeyDeletionOutput, error)
	EnableKey(ctx context.Context, in *kms.EnableKeyInput, optFns ...func(*kms.Options)) (*kms.EnableKeyOutput, error)
	ListAliases(ctx context.Context, in *kms.ListAliasesInput, optFns ...func(*kms.Options)) (*kms.ListAliasesOutput, error)
}

var _ KMS = (*kms.Client)(nil)

// Options tune the SDK client. Zero values take the defaults below.
type Options struct {
	// MaxAttempts per call, first try included (default 8). Throttling and
	// 5xx answers are retried with capped exponential backoff and jitter.
	MaxAttempts int
	// MaxBackoff caps the delay between two attempts (default 5s).
	MaxBackoff time.Duration
	// Budget, when set, paces every HTTP attempt (retries included).
	Budget *Budget
	// Observe, when set, is told about every HTTP attempt.
	Observe Observer
	// MaxConns is the idle connection pool per host (default 256), sized for
	// the worker pool so that busy workers do not churn TCP connections.
	MaxConns int
	// Timeout bounds one HTTP attempt (default 15s).
	Timeout time.Duration
	// SDKOnly sends every call through the SDK's middleware stack, the
	// per-row calls too (see directKMS; KMS_DIRECT=false).
	SDKOnly bool
}

const (
	defaultMaxAttempts = 8
	defaultMaxBackoff  = 5 * time.Second
	defaultMaxConns    = 256
	defaultTimeout     = 15 * time.Second
)

// New builds a KMS client from the SDK's default configuration chain, so
// AWS_REGION, AWS_ENDPOINT_URL_KMS, AWS_PROFILE, web identity (IRSA) and the
// usual credential variables work as in every other AWS tool. Unless
// opts.SDKOnly, Decrypt, GenerateDataKey and ReEncrypt take the direct path
// (directKMS) with the same configuration.
func New(ctx context.Context, opts Options) (KMS, error) {
	maxAttempts := opts.MaxAttempts
	if maxAttempts <= 0 {
		maxAttempts = defaultMaxAttempts
	}
	maxBackoff := opts.MaxBackoff
	if maxBackoff <= 0 {
		maxBackoff = defaultMaxBackoff
	}
	maxConns := opts.MaxConns
	if maxConns <= 0 {
		maxConns = defaultMaxConns
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}

	httpClient := awshttp.NewBuildableClient().
		WithTimeout(timeout).
		WithTransportOptions(func(t *http.Transport) {
			t.MaxIdleConns = maxConns
			t.MaxIdleConnsPerHost = maxConns
		})
	cfg, err := config.LoadDefaultConfig(ctx,
		config.WithHTTPClient(httpClient),
		config.WithRetryer(func() aws.Retryer { return newRetryer(maxAttempts, maxBackoff) }),
	)
	if err != nil {
		return nil, fmt.Errorf("load aws configuration: %w", err)
	}
	if cfg.Region == "" {
		return nil, fmt.Errorf("no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or a profile with a region)")
	}
	sdk := kms.NewFromConfig(cfg, func(o *kms.Options) {
		o.APIOptions = append(o.APIOptions, attemptMiddleware(opts.Budget, opts.Observe))
	})
	if opts.SDKOnly {
		return sdk, nil
	}
	direct, err := newDirect(ctx, sdk, opts)
	if err != nil {
		return nil, fmt.Errorf("kms client: %w (KMS_DIRECT=false sends every call through the SDK)", err)
	}
	return direct, nil
}

// newRetryer is the SDK's standard retryer without its client-side retry
// quota: the quota is the component that turns throttling under concurrency
// into hard failures; the Budget does the pacing instead. For the same
// reason a throttled attempt is retried after a short delay (see
// throttleAware) rather than the SDK's, which starts at up to 1 s: with a
// worker blocked that long for every throttled answer, 10 % of throttling
// cut a run to a tenth of its budget. Slowing down is the budget's job.
// Every other error keeps the SDK's own backoff (50 ms base since the 2026
// retry behaviour).
func newRetryer(maxAttempts int, maxBackoff time.Duration) aws.RetryerV2 {
	return throttleAware{Standard: retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = maxAttempts
		o.MaxBackoff = maxBackoff
		o.RateLimiter = ratelimit.None
	}), max: maxBackoff}
}

// throttleAware is the SDK's standard retryer with one change: after a
// throttled attempt it waits a random [1 ms, 50 ms × 2^(attempt−1)), capped
// at max.
type throttleAware struct {
	*retry.Standard
	max time.Duration
}

// throttleBase is the first retry's delay ceiling after a throttled attempt.
const throttleBase = 50 * time.Millisecond

func (r throttleAware) RetryDelay(attempt int, err error) (time.Duration, error) {
	var ae smithy.APIError
	if !errors.As(err, &ae) || !isThrottle(ae.ErrorCode()) {
		return r.Standard.RetryDelay(attempt, err)
	}
	ceiling := min(throttleBase<<min(max(attempt-1, 0), 10), r.max)
	return rand.N(ceiling) + time.Millisecond, nil
}
