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
	var engineCarry, apiCarry float64
	for end := s.elapsed + d; s.elapsed < end; s.elapsed += tick {
		s.now = s.now.Add(tick)
		counted := s.elapsed >= s.warmUp
		r := s.b.PerSecond()
		if counted {
			s.minRate, s.maxRate = min(s.minRate, r), max(s.maxRate, r)
		}
		// This tick's attempts, the API's and the engine's, in random order.
		var order []bool // true = the API's
		for apiCarry += apiPerSec * tick.Seconds(); apiCarry >= 1; apiCarry-- {
			order = append(order, true)
		}
		if s.demand > 0 {
			r = min(r, s.demand)
		}
		for engineCarry += r * tick.Seconds(); engineCarry >= 1; engineCarry-- {
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
	s := newSim(q)
	s.run(5*time.Second, 0, func(bool) bool { return false })
	s.run(3*time.Second, 0, func(bool) bool { return true })
	var back time.Duration
	for back = 0; back < 30*time.Second && s.b.PerSecond() < q; back += tick {
		s.run(tick, 0, func(bool) bool { return false })
	}
	t.Logf("back to %.0f/s %s after the outage", s.b.PerSecond(), back)
	if back > 10*time.Second {
		t.Errorf("rate took %s to recover after a 3 s outage, want at most 10 s", back)
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
