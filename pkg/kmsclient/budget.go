package kmsclient

import (
	"context"
	"errors"
	"math"
	"sync"
	"time"

	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	"golang.org/x/time/rate"
)

// Budget is this process's share of the KMS request rate. It is a token
// bucket that every HTTP attempt waits on, so retries count too, and it is
// adaptive: KMS quotas are per account and region and shared with the live
// API, so KMS_RATE_LIMIT is only a ceiling; the rate actually used follows
// the throttling KMS answers with, additive increase and multiplicative
// decrease (AIMD, as TCP does):
//
//   - A budget starts at a quarter of its ceiling and grows a quarter each
//     window until KMS first throttles or the ceiling is reached (slow
//     start, as TCP does), so that a Job starting next to a busy API does
//     not empty the shared quota in its first second.
//   - Attempts are judged in windows of adaptWindow. Each window's share of
//     throttled attempts is taken as an interval (Wilson, 2 standard
//     deviations), so that a window of 30 attempts is not read as surely
//     as one of 300. The noise level is the lowest upper bound of the last
//     noiseWindows windows, pooled noiseSpan at a time so that it can be
//     told apart from zero at about 1 % (at most maxNoise). A window whose
//     lower bound is above the noise level + noiseMargin multiplies the rate by
//     decreaseFactor, from the rate actually sent in that window.
//     Throttling that does not depend on our rate (a noisy neighbour, a
//     flaky endpoint) sets the noise level and does not slow the run down;
//     throttling that grows with our rate (a quota) does: under a quota the
//     rate dips below it at least once a cycle, and those windows bring the
//     noise level back to zero.
//   - After a clean spell the first throttling is judged as it comes, not
//     at the window's end: a window that already shows a quota ends there
//     (see actNow), so the live API is not throttled for a second or more
//     while the clock catches up.
//   - Right after a decrease, a share that fell clearly but is still above
//     the margin decreases again: the throttling follows our rate, so it is
//     a quota, and we are still over it. This finds a quota that was
//     exceeded from the first window, before any dip taught the noise level.
//   - Any other window adds ceiling/increaseSteps, and after quietWindows
//     windows in a row without a decrease, more each window (× 1 + n/2 in
//     the n-th window past them): faster the longer KMS stays quiet, so the
//     full rate is back within seconds after throttling stops. From
//     plateauBelow under the rate last throttled to plateauAbove over it
//     the steps are small, growing with each clean window: that is where
//     the quota was, and each window spent over it throttles the live API
//     too, so the edge is probed about every 8 s rather than every 2 (the
//     API's throttled share in the simulation: 0.65 % → 0.10 %).
//
// The SDK's adaptive retry mode (aws/retry.AdaptiveMode) does the same per
// client with CUBIC, but it has no ceiling, treats any throttling as a
// quota, and its state cannot be shared between pods; see Share.
type Budget struct {
	limiter *rate.Limiter
	ceiling float64 // KMS_RATE_LIMIT's share for this process; +Inf = none

	mu        sync.Mutex
	now       func() time.Time
	perSec    float64 // the rate in force; ≤ ceiling
	winStart  time.Time
	attempts  int64 // in the current window
	throttled int64
	recent    []window // the last judged windows, oldest first
	decreases int64
	clean     int     // windows in a row without a decrease
	lastLow   float64 // the last judged window's least throttled share
	peak      float64 // the rate last throttled into a decrease; 0 = none yet
	inOutage  bool    // the last judged window was (almost) wholly throttled
	slowStart bool    // growing ×slowStartGrowth a window until the first throttling or the ceiling
	fixed     bool    // KMS_ADAPTIVE=false: never adapts
	cap       float64 // an outside cap (operator, shared budget); +Inf = none
}

// Adaptation constants; see Budget.
const (
	adaptWindow     = 500 * time.Millisecond
	minJudged       = 20                     // attempts a window with no throttling needs to count
	wilsonZ         = 2.0                    // standard deviations of a window's throttled share
	decreaseFactor  = 0.8                    // of the rate sent in the throttled window
	increaseSteps   = 40                     // the first step after a decrease is a 40th of the ceiling
	noiseWindows    = 16                     // windows the noise level is taken over (8 s)
	noiseSpan       = 4                      // windows pooled into one noise estimate (2 s)
	quietWindows    = 4                      // clean windows before the increase speeds up
	maxNoise        = 0.15                   // above 2 × this, throttling is always a quota
	noiseMargin     = 0.01                   // throttled share above the noise that is a quota
	unlimitedGrowth = 0.1                    // rate growth per window when there is no ceiling
	slowStartShare  = 0.25                   // of the ceiling a new budget starts at
	slowStartGrowth = 1.25                   // per window, until KMS first throttles
	plateauBelow    = 0.12                   // the creeping starts this far under the last throttled rate
	plateauAbove    = 0.05                   // ... and ends this far over it
	plateauStep     = 0.002                  // of the last throttled rate per window while creeping
	plateauSpeedup  = 8                      // ... × 1 + n/plateauSpeedup in the n-th clean window
	outageShare     = 90                     // % of a window throttled that is an outage, not a quota
	maxReservation  = 200 * time.Millisecond // the furthest ahead Wait holds a place
)

// NewBudget returns a budget of perSec requests per second for this process:
// clusterPerSec divided by the number of processes sharing it. A zero or
// negative rate means no ceiling: the budget is unlimited until KMS
// throttles, then adapts.
func NewBudget(clusterPerSec float64, processes int) *Budget {
	if processes < 1 {
		processes = 1
	}
	ceiling := clusterPerSec / float64(processes)
	if ceiling <= 0 {
		ceiling = math.Inf(1)
	}
	b := &Budget{limiter: rate.NewLimiter(rate.Inf, 0), ceiling: ceiling, now: time.Now, cap: math.Inf(1)}
	b.setRate(ceiling)
	if !math.IsInf(ceiling, 1) {
		b.slowStart = true
		b.setRate(max(ceiling*slowStartShare, 1))
	}
	return b
}

// setRate applies r to the token bucket. A token bucket lets through
// refill×T + burst requests in any window T. Refilling at r − 2·burst keeps
// every one-second window, the span KMS quotas are measured on, a burst
// below r, which leaves room for requests that leave here in one second and
// reach KMS in the next. A burst of 2 % lets a page start without waiting.
func (b *Budget) setRate(r float64) {
	b.perSec = r
	if math.IsInf(r, 1) {
		b.limiter.SetLimit(rate.Inf)
		return
	}
	burst := max(1, int(r/50))
	refill := max(r-2*float64(burst), r/2)
	b.limiter.SetBurst(burst)
	b.limiter.SetLimit(rate.Limit(refill))
}

// PerSecond is the rate in force now; +Inf when unlimited.
func (b *Budget) PerSecond() float64 {
	if b == nil {
		return math.Inf(1)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.perSec
}

// Ceiling is the most this budget will ever send per second (+Inf: none).
func (b *Budget) Ceiling() float64 {
	if b == nil {
		return math.Inf(1)
	}
	return b.ceiling
}

// Decreases counts the times the budget slowed down for throttling.
func (b *Budget) Decreases() int64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.decreases
}

// Wait blocks until one request may be sent. It never holds a place in the
// bucket more than maxReservation ahead: a reservation keeps the rate it was
// made at, and after an outage has slowed the budget to a few requests per
// second, two dozen waiters would otherwise sleep for seconds after the rate
// has grown back. A longer wait is taken in steps, reserving anew each time.
func (b *Budget) Wait(ctx context.Context) error {
	if b == nil {
		return nil
	}
	for {
		r := b.limiter.Reserve()
		if !r.OK() {
			return b.limiter.Wait(ctx) // reports why (no burst)
		}
		d := r.Delay()
		if d <= 0 {
			return nil
		}
		last := d <= maxReservation
		if !last {
			r.Cancel()
			d = maxReservation
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			if last {
				r.Cancel()
			}
			return ctx.Err()
		case <-t.C:
		}
		if last {
			return nil
		}
	}
}

// Fixed turns adaptation off: the budget stays at its ceiling whatever KMS
// answers (KMS_ADAPTIVE=false; caps still apply). It returns b.
func (b *Budget) Fixed() *Budget {
	if b != nil {
		b.mu.Lock()
		b.fixed = true
		b.mu.Unlock()
	}
	return b
}

// observe counts one attempt's answer and, at the end of a window, adapts.
func (b *Budget) observe(throttled bool) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fixed {
		return
	}
	now := b.now()
	if b.winStart.IsZero() {
		b.winStart = now
	}
	if elapsed := now.Sub(b.winStart); elapsed >= adaptWindow {
		b.judge(elapsed)
		b.winStart, b.attempts, b.throttled = now, 0, 0
	}
	b.attempts++
	if throttled {
		b.throttled++
		if b.actNow() {
			b.judge(now.Sub(b.winStart))
			b.winStart, b.attempts, b.throttled = now, 0, 0
		}
	}
}

// actNow says whether the current window already shows a quota, before its
// end. The first throttling after a clean spell (recent windows throttled
// under noiseMargin) is acted on as soon as it is significant: every attempt
// over the quota may also throttle one of the live API's requests, and the
// API's SDK gives up after three. On the 500 ms clock alone a quota first
// touched mid-window was read only at the end of the next window; next to
// a 50 requests/s API that second of throttling failed a request in about
// one bench-online smoke run in three. Once the budget has slowed down,
// windows pace the decreases as before: each must show what the lower rate
// did before the next.
func (b *Budget) actNow() bool {
	if b.attempts < 2*minJudged || (b.decreases > 0 && b.clean == 0) {
		return false
	}
	noise := b.noiseLevel()
	if noise > noiseMargin {
		return false // not a clean spell: windows tell a quota from this noise
	}
	low, high := wilson(b.throttled, b.attempts)
	return b.overQuota(low, high, noise)
}

// judge ends a window of elapsed length.
func (b *Budget) judge(elapsed time.Duration) {
	if b.attempts < minJudged && b.throttled == 0 {
		b.increase() // too few attempts to learn from, none throttled
		return
	}
	low, high := wilson(b.throttled, b.attempts)
	noise := b.noiseLevel()
	// With nothing to compare with yet, the first window is taken as noise
	// up to maxNoise: slow start began under the quota, so a quota shows as
	// a share that grows with the rate in the windows that follow.
	b.recent = append(b.recent, window{b.attempts, b.throttled})
	if len(b.recent) > noiseWindows {
		b.recent = b.recent[1:]
	}
	over := b.overQuota(low, high, noise)
	b.lastLow = low
	if over {
		sent := float64(b.attempts) / elapsed.Seconds()
		b.decreases++
		b.clean = 0
		b.slowStart = false
		rate := min(b.perSec, sent)
		b.setRate(max(rate*decreaseFactor, 1))
		// Where the quota is: the rate throttled. A window KMS refused
		// (almost) whole is an outage, not a quota at our rate: no plateau
		// to creep through when it ends. Nor is the window right after
		// one, partly throttled because the outage ended in it: taken as a
		// quota, it left the budget creeping near a fifth of its ceiling
		// for half a minute, whenever a window happened to straddle the
		// outage's end.
		outage := b.throttled >= b.attempts*outageShare/100
		b.peak = 0
		if !outage && !b.inOutage {
			b.peak = rate
		}
		b.inOutage = outage
		return
	}
	b.inOutage = false
	b.increase()
}

// noiseLevel is the least throttling seen recently, taken at the most it
// could have been (the upper bound), so that a lucky window does not pull
// the level to zero. Windows are pooled noiseSpan at a time: one window of
// 100 attempts none throttled can only say "under 4 %", four of them
// "under 1 %", and a quota the live API shares must be told from noise at
// about 1 %.
func (b *Budget) noiseLevel() float64 {
	noise := maxNoise
	span := min(noiseSpan, len(b.recent))
	for i := span; i <= len(b.recent) && span > 0; i++ {
		var pooled window
		for _, w := range b.recent[i-span : i] {
			pooled.attempts += w.attempts
			pooled.throttled += w.throttled
		}
		_, h := wilson(pooled.throttled, pooled.attempts)
		noise = min(noise, h)
	}
	return noise
}

// overQuota says whether a window whose throttled share lies in [low, high]
// shows a quota at our rate rather than noise: its share is clearly above
// the noise level. Right after a decrease, a share that fell clearly but
// not to the noise level also does: the throttling follows our rate, and we
// are still over the quota. A share that did not fall is noise, and the
// level learnt from this window says so.
func (b *Budget) overQuota(low, high, noise float64) bool {
	followsRate := b.clean == 0 && b.decreases > 0 && high < b.lastLow && low > noiseMargin
	return followsRate || low > noise+noiseMargin
}

// window is one judged window's count of attempts and throttled ones.
type window struct{ attempts, throttled int64 }

// wilson is the Wilson score interval of k successes in n trials at
// wilsonZ standard deviations: where the true share lies, almost surely.
func wilson(k, n int64) (low, high float64) {
	if n == 0 {
		return 0, 1
	}
	p, nf, z2 := float64(k)/float64(n), float64(n), wilsonZ*wilsonZ
	center := (p + z2/(2*nf)) / (1 + z2/nf)
	half := wilsonZ * math.Sqrt(p*(1-p)/nf+z2/(4*nf*nf)) / (1 + z2/nf)
	return max(center-half, 0), min(center+half, 1)
}

func (b *Budget) increase() {
	limit := min(b.ceiling, b.cap)
	if b.perSec >= limit {
		if b.perSec > limit {
			b.setRate(limit)
		}
		b.slowStart = false
		return
	}
	if b.slowStart {
		b.setRate(min(b.perSec*slowStartGrowth, limit))
		return
	}
	b.clean++
	step := limit / increaseSteps * (1 + float64(max(b.clean-quietWindows, 0))/2)
	if math.IsInf(limit, 1) {
		step = max(b.perSec*unlimitedGrowth, 1)
	}
	// Near the rate that was last throttled, creep: that is where the
	// quota was, and time spent over it is time the live API is throttled.
	if p := b.peak; p > 0 && b.perSec >= p*(1-plateauBelow) && b.perSec < p*(1+plateauAbove) {
		step = min(step, max(p*plateauStep*(1+float64(b.clean)/plateauSpeedup), 1))
	}
	b.setRate(min(b.perSec+step, limit))
}

// Follow slows the budget down as if it had been throttled itself: another
// pod sharing the quota was, and pods that back off together converge on
// the quota together instead of one pod giving way to the others.
func (b *Budget) Follow() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fixed || math.IsInf(b.perSec, 1) {
		return // fixed, or no rate to slow down from: its own throttling will set one
	}
	b.clean = 0
	b.setRate(max(b.perSec*decreaseFactor, 1))
}

// SetCap caps the budget below its ceiling (an operator's throttle, or this
// pod's share of a budget shared with other pods); +Inf or ≤ 0 removes it.
// The rate drops to the cap at once and grows back to it as usual.
func (b *Budget) SetCap(perSec float64) {
	if b == nil {
		return
	}
	if perSec <= 0 {
		perSec = math.Inf(1)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cap = perSec
	switch {
	case b.fixed: // no adaptation to grow it back: the cap applies as is
		b.setRate(min(b.ceiling, perSec))
	case b.perSec > perSec:
		b.setRate(perSec)
	}
}

// Concurrency is how many requests must be in flight to use the budget's
// ceiling fully when one request takes latency: Little's law (rate × latency) with 50 %
// headroom, clamped to [minC, maxC]. An unlimited budget gets maxC.
func (b *Budget) Concurrency(latency time.Duration, minC, maxC int) int {
	if b == nil || math.IsInf(b.ceiling, 1) {
		return maxC
	}
	n := int(math.Ceil(b.ceiling * latency.Seconds() * 1.5))
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
			func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (out middleware.FinalizeOutput, md middleware.Metadata, err error) {
				err = observeAttempt(ctx, budget, observe, awsmiddleware.GetOperationName(ctx), func() error {
					out, md, err = next.HandleFinalize(ctx, in)
					return err
				})
				return out, md, err
			}), middleware.After)
	}
}

// observeAttempt is one HTTP attempt of operation op, in the SDK's stack or
// the direct path: it waits for the budget, runs send, and tells the budget
// and the observer how it went.
func observeAttempt(ctx context.Context, budget *Budget, observe Observer, op string, send func() error) error {
	if err := budget.Wait(ctx); err != nil {
		return err
	}
	start := time.Now()
	err := send()
	result := resultOf(err)
	budget.observe(result == "throttled")
	if observe != nil {
		observe(op, result, time.Since(start))
	}
	return err
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
