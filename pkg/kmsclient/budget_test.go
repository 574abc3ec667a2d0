package kmsclient

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// sim drives a Budget with simulated time: every tick the engine sends what
// its rate allows, and kms decides which attempts are throttled.
type sim struct {
	b   *Budget
	now time.Time
	rng *rand.Rand
	// engineSent and apiSent/apiThrottled are counted after warmUp.
	warmUp                time.Duration
	elapsed               time.Duration
	engineSent, engineOK  float64
	apiSent, apiThrottled float64
	minRate, maxRate      float64
	// demand, when > 0, is the most the engine sends per second whatever
	// its budget: pages of a few hundred rows and a commit between them
	// keep a real engine under its budget.
	demand float64
	// The fractions of an attempt carried to the next tick, kept across
	// calls to run: run(tick) at under 100/s must still send.
	engineCarry, apiCarry float64
}

const tick = 10 * time.Millisecond

func newSim(ceiling float64) *sim {
	s := &sim{b: NewBudget(ceiling, 1), now: time.Unix(1_000_000, 0), rng: rand.New(rand.NewPCG(1, 2)),
		minRate: math.Inf(1)}
	s.b.now = func() time.Time { return s.now }
	return s
}

// run advances d. throttle says whether one attempt is throttled, given
// whether it is the API's.
func (s *sim) run(d time.Duration, apiPerSec float64, throttle func(api bool) bool) {
	for end := s.elapsed + d; s.elapsed < end; s.elapsed += tick {
		s.now = s.now.Add(tick)
		counted := s.elapsed >= s.warmUp
		r := s.b.PerSecond()
		if counted {
			s.minRate, s.maxRate = min(s.minRate, r), max(s.maxRate, r)
		}
		// This tick's attempts, the API's and the engine's, in random order.
		var order []bool // true = the API's
		for s.apiCarry += apiPerSec * tick.Seconds(); s.apiCarry >= 1; s.apiCarry-- {
			order = append(order, true)
		}
		if s.demand > 0 {
			r = min(r, s.demand)
		}
		for s.engineCarry += r * tick.Seconds(); s.engineCarry >= 1; s.engineCarry-- {
			order = append(order, false)
		}
		s.rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, api := range order {
			th := throttle(api)
			switch {
			case api && counted:
				s.apiSent++
				if th {
					s.apiThrottled++
				}
			case !api:
				s.b.observe(th)
				if counted {
					s.engineSent++
					if !th {
						s.engineOK++
					}
				}
			}
		}
	}
}

func (s *sim) engineRate() float64 { return s.engineOK / (s.elapsed - s.warmUp).Seconds() }

// quota is a token bucket of perSec with a tenth of a second of burst,
// shared by the engine and the API, as KMS enforces an account's quota.
func (s *sim) quota(perSec float64) func(bool) bool {
	tokens, last := perSec/10, s.now
	return func(bool) bool {
		tokens = min(perSec/10, tokens+s.now.Sub(last).Seconds()*perSec)
		last = s.now
		if tokens >= 1 {
			tokens--
			return false
		}
		return true
	}
}

// The user sets KMS_RATE_LIMIT to the whole quota Q, not knowing that the
// live API uses 0.3 Q of it: the budget must settle under what is left
// (0.7 Q), use most of it, and leave the API almost never throttled.
func TestBudgetSettlesUnderASharedQuota(t *testing.T) {
	const q = 1000.0
	s := newSim(q)
	s.warmUp = 10 * time.Second
	s.run(70*time.Second, 0.3*q, s.quota(q))
	got := s.engineRate()
	apiShare := s.apiThrottled / s.apiSent
	t.Logf("engine %.0f/s accepted (%.2f of the 0.7 Q left), rate %.0f..%.0f; API throttled %.2f %%; %d decreases",
		got, got/(0.7*q), s.minRate, s.maxRate, 100*apiShare, s.b.Decreases())
	if got < 0.85*0.7*q {
		t.Errorf("engine sustained %.0f/s, want at least 0.85 × 0.7 Q = %.0f", got, 0.85*0.7*q)
	}
	if got > 0.7*q*1.02 {
		t.Errorf("engine sustained %.0f/s, more than the %.0f the API leaves", got, 0.7*q)
	}
	if apiShare > 0.02 {
		t.Errorf("the API was throttled %.2f %% of the time, want at most 2 %%", 100*apiShare)
	}
}

// Throttling that does not depend on our rate (10 % of answers at random,
// no quota) is noise: the budget must keep at least 0.8 of its ceiling.
func TestBudgetIgnoresRandomThrottling(t *testing.T) {
	const ceiling = 1000.0
	s := newSim(ceiling)
	s.warmUp = 5 * time.Second
	s.run(35*time.Second, 0, func(bool) bool { return s.rng.Float64() < 0.1 })
	sent := s.engineSent / (s.elapsed - s.warmUp).Seconds()
	t.Logf("sent %.0f/s (%.2f of the ceiling), rate %.0f..%.0f, %d decreases", sent, sent/ceiling, s.minRate, s.maxRate, s.b.Decreases())
	if sent < 0.8*ceiling {
		t.Errorf("sent %.0f/s under 10 %% random throttling, want at least 0.8 × %.0f", sent, ceiling)
	}
}

// A budget running clean at its ceiling meets a quota (the live API's
// traffic grows and the two together exceed it by a tenth): every attempt
// over the quota may be one of the API's, and its SDK gives up after three,
// so the budget must slow down as soon as the throttling is significant,
// not at the end of the window after the one it began in. Measured from the
// first throttled attempt to the first decrease, over every phase of the
// quota's onset against the 500 ms windows.
func TestBudgetActsOnAQuotaWithinAWindow(t *testing.T) {
	const ceiling, q, api = 350.0, 400.0, 100.0
	var worst time.Duration
	for offset := time.Duration(0); offset < adaptWindow; offset += 50 * time.Millisecond {
		s := newSim(ceiling)
		s.rng = rand.New(rand.NewPCG(uint64(offset), 7))
		quota := s.quota(q)
		s.run(10*time.Second+offset, 0, quota) // alone, at the ceiling, never throttled
		if s.b.Decreases() != 0 || s.b.PerSecond() != ceiling {
			t.Fatalf("alone under the quota: %d decreases, %.0f/s", s.b.Decreases(), s.b.PerSecond())
		}
		var first, reacted time.Duration
		s.run(5*time.Second, api, func(isAPI bool) bool {
			th := quota(isAPI)
			if th && first == 0 {
				first = s.elapsed
			}
			if reacted == 0 && s.b.Decreases() > 0 {
				reacted = s.elapsed
			}
			return th
		})
		if first == 0 || reacted == 0 {
			t.Fatalf("offset %s: over the quota for 5 s: first throttled at %s, first decrease at %s", offset, first, reacted)
		}
		worst = max(worst, reacted-first)
	}
	// About 60 attempts (170 ms here) make 11 % throttling significant.
	const within = 300 * time.Millisecond
	t.Logf("first throttled attempt to first decrease: at most %s", worst)
	if worst > within {
		t.Errorf("the budget slowed down %s after KMS began to throttle it, want within %s", worst, within)
	}
}

// The same when the engine sends less than its budget allows (pages, then
// commits): few attempts per window make the throttled share noisy, and
// noise must not read as a quota. The fault soak's 10 % throttling cut a run
// to 40 rows/s when it did.
func TestBudgetIgnoresRandomThrottlingAtLowDemand(t *testing.T) {
	for _, demand := range []float64{30, 150, 600} {
		s := newSim(1000)
		s.demand = demand
		s.warmUp = 5 * time.Second
		s.run(65*time.Second, 0, func(bool) bool { return s.rng.Float64() < 0.1 })
		sent := s.engineSent / (s.elapsed - s.warmUp).Seconds()
		t.Logf("demand %.0f/s: sent %.0f/s, budget %.0f..%.0f, %d decreases", demand, sent, s.minRate, s.maxRate, s.b.Decreases())
		if sent < 0.9*demand {
			t.Errorf("demand %.0f/s: sent %.0f/s under 10 %% random throttling, want at least 0.9 × the demand", demand, sent)
		}
	}
}

// When throttling stops, the full rate is back within seconds.
func TestBudgetRecoversWhenThrottlingStops(t *testing.T) {
	const q = 1000.0
	s := newSim(q)
	s.run(20*time.Second, 0, s.quota(0.3*q)) // a quota far below the ceiling
	if r := s.b.PerSecond(); r > 0.5*q {
		t.Fatalf("rate %.0f/s under a 300/s quota, want it well below the ceiling", r)
	}
	var back time.Duration
	for back = 0; back < 30*time.Second && s.b.PerSecond() < q; back += tick {
		s.run(tick, 0, func(bool) bool { return false })
	}
	t.Logf("back to %.0f/s %s after throttling stopped", s.b.PerSecond(), back)
	if back > 10*time.Second {
		t.Errorf("rate took %s to recover, want at most 10 s", back)
	}
}

// An outage (every attempt throttled for 3 s, as in the fault suite) is not
// a quota at the rate it hit: when it ends the rate grows back as after any
// throttling, without creeping through a plateau around a rate KMS never
// accepted.
func TestBudgetRecoversAfterAnOutage(t *testing.T) {
	const q = 500.0
	// Every phase of the outage against the 500 ms windows: a window that
	// straddles the outage's end is partly throttled, and must not be
	// taken for a quota either.
	for offset := time.Duration(0); offset < adaptWindow; offset += 50 * time.Millisecond {
		s := newSim(q)
		s.run(5*time.Second+offset, 0, func(bool) bool { return false })
		s.run(3*time.Second, 0, func(bool) bool { return true })
		var back time.Duration
		for back = 0; back < 30*time.Second && s.b.PerSecond() < q; back += tick {
			s.run(tick, 0, func(bool) bool { return false })
		}
		if back > 10*time.Second {
			t.Errorf("outage starting %s into a window: rate took %s to recover after a 3 s outage (at %.0f/s then), want at most 10 s",
				offset, back, s.b.PerSecond())
		}
	}
}

// A cap (operator throttle, shared budget) bounds the rate at once and is
// never exceeded while growing back.
func TestBudgetCap(t *testing.T) {
	s := newSim(1000)
	s.b.SetCap(200)
	if r := s.b.PerSecond(); r != 200 {
		t.Fatalf("rate %.0f after SetCap(200)", r)
	}
	s.run(5*time.Second, 0, func(bool) bool { return false })
	if r := s.b.PerSecond(); r != 200 {
		t.Fatalf("rate %.0f after 5 s under a 200 cap", r)
	}
	s.b.SetCap(0)
	s.run(25*time.Second, 0, func(bool) bool { return false })
	if r := s.b.PerSecond(); r != 1000 {
		t.Fatalf("rate %.0f after the cap was lifted, want the ceiling 1000", r)
	}
}

// A Job starting next to a busy API starts slowly (a quarter of the
// ceiling, a quarter more every window): its first seconds do not empty the
// shared quota, and with no throttling it is at the ceiling within 4 s.
func TestBudgetStartsGently(t *testing.T) {
	const q = 1000.0
	s := newSim(q)
	if r := s.b.PerSecond(); r != q/4 {
		t.Fatalf("a new budget runs at %.0f/s, want a quarter of the ceiling %.0f", r, q/4)
	}
	s.run(5*time.Second, 0.3*q, s.quota(q))
	apiShare := s.apiThrottled / s.apiSent
	t.Logf("first 5 s next to an API using 0.3 Q: API throttled %.2f %%, engine %.0f/s accepted", 100*apiShare, s.engineRate())
	if apiShare > 0.02 {
		t.Errorf("the API was throttled %.2f %% of its first 5 s with the Job, want at most 2 %%", 100*apiShare)
	}

	quiet := newSim(q)
	var full time.Duration
	for full = 0; full < 10*time.Second && quiet.b.PerSecond() < q; full += tick {
		quiet.run(tick, 0, func(bool) bool { return false })
	}
	if full > 4*time.Second {
		t.Errorf("with no throttling the budget took %s to reach its ceiling, want at most 4 s", full)
	}
}

// TestBudgetWindowBound drives the budget's token bucket on explicit times
// (rate.Limiter.AllowN), 1 ms apart, taking every attempt it allows: no
// one-second window, the span KMS quotas are measured on, holds more than
// the rate, and the bucket is not much slower than it either. (The rate
// over a run, retries included, is TestBudgetBoundsRequestRate's.)
func TestBudgetWindowBound(t *testing.T) {
	for _, perSec := range []float64{10, 50, 200, 1000, 5000} {
		t.Run(fmt.Sprint(perSec), func(t *testing.T) {
			b := NewBudget(perSec, 1).Fixed()
			b.setRate(perSec)
			// Past anything the limiter saw at setRate: the bucket starts full.
			start := time.Now().Add(time.Hour)
			const span = 10 * time.Second
			var sent []time.Duration // offsets from start
			for at := time.Duration(0); at < span; at += time.Millisecond {
				for b.limiter.AllowN(start.Add(at), 1) {
					sent = append(sent, at)
				}
			}
			busiest := 0
			for i, lo := 0, 0; i < len(sent); i++ {
				for sent[i]-sent[lo] >= time.Second {
					lo++
				}
				busiest = max(busiest, i-lo+1)
			}
			if float64(busiest) > perSec {
				t.Errorf("busiest one-second window sent %d, rate is %.0f/s", busiest, perSec)
			}
			// The bucket refills at the rate less two bursts (setRate): 8/s
			// of 10/s, 4900/s of 5000/s.
			if mean := float64(len(sent)) / span.Seconds(); mean < perSec*0.75 {
				t.Errorf("sent %.1f/s over %s, want at least 75%% of %.0f/s", mean, span, perSec)
			}
		})
	}
}

// A Job that starts while the live API is already being throttled meets
// throttling in its very first window, with nothing to tell it from noise:
// here the API's retries after an incident add 0.5 Q to its usual 0.3 Q,
// fading over 20 s (as bench-online's default phase meets the unpaced
// phase's backlog). The budget must still find out that the throttling
// follows its own rate and settle under what the API leaves, instead of
// taking the quota for noise, its level rising with the budget's own rate,
// and crowding the API for the rest of the run.
func TestBudgetFindsAQuotaThatThrottledFromTheStart(t *testing.T) {
	const q = 1000.0
	s := newSim(q)
	s.warmUp = 25 * time.Second // the fading retries, then 5 s to settle
	quota := s.quota(q)
	for sec := range 20 {
		s.run(time.Second, 0.3*q+0.5*q*float64(20-sec)/20, quota)
	}
	s.run(35*time.Second, 0.3*q, quota)
	got := s.engineRate()
	apiShare := s.apiThrottled / s.apiSent
	t.Logf("after the retries: engine %.0f/s accepted (%.2f of the 0.7 Q left), rate %.0f..%.0f; API throttled %.2f %%; %d decreases",
		got, got/(0.7*q), s.minRate, s.maxRate, 100*apiShare, s.b.Decreases())
	if apiShare > 0.02 {
		t.Errorf("the API was throttled %.2f %% of the time after its retries, want at most 2 %%", 100*apiShare)
	}
	if got < 0.85*0.7*q {
		t.Errorf("engine sustained %.0f/s, want at least 0.85 × 0.7 Q = %.0f", got, 0.85*0.7*q)
	}
}
