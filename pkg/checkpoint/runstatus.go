package checkpoint

import (
	"math"
	"math/big"
	"strings"
	"time"
)

// This file holds the arithmetic of `status`: what a run's recorded ranges
// say about its progress (shares of the keyspace, rates, ETAs), against the
// database's clock. The command only prints it; the JSON field names are
// the --json contract.

// RowCounts is Counts as status reports them, with the rows read.
type RowCounts struct {
	Read        int64 `json:"read"`
	Rotated     int64 `json:"rotated"`
	Skipped     int64 `json:"skipped"`
	OtherKey    int64 `json:"other_key"`
	Quarantined int64 `json:"quarantined"`
	Conflicted  int64 `json:"conflicted"`
}

// RowCountsOf reports c.
func RowCountsOf(c Counts) RowCounts {
	return RowCounts{Read: c.Rows(), Rotated: c.Rotated, Skipped: c.Skipped, OtherKey: c.OtherKey,
		Quarantined: c.Quarantined, Conflicted: c.Conflicted}
}

// RunStatus is one run's current pass as `status` reports it.
type RunStatus struct {
	RunID          string     `json:"run_id"`
	OldKeyARN      string     `json:"old_key_arn"`
	NewKeyARN      string     `json:"new_key_arn"`
	Mode           string     `json:"mode"`
	Namespace      string     `json:"namespace"`
	Pass           int        `json:"pass"`
	State          string     `json:"state"` // running | stopped | done
	PassStartedAt  *time.Time `json:"pass_started_at"`
	PassFinishedAt *time.Time `json:"pass_finished_at,omitempty"`
	ElapsedSeconds float64    `json:"elapsed_seconds"`

	Ranges struct {
		Total      int `json:"total"`
		Done       int `json:"done"`
		Running    int `json:"running"`
		Stale      int `json:"stale"` // running, but the lease expired: its owner is gone
		Pending    int `json:"pending"`
		Paused     int `json:"paused"` // pending, part done (released on shutdown)
		LiveLeases int `json:"live_leases"`
	} `json:"ranges"`
	Rows RowCounts `json:"rows"` // this pass
	// RunTotal is the run's rows over all its passes: after a rerun, the
	// pass alone shows mostly rows skipped (already under NEW).
	RunTotal RowCounts `json:"run_total"`
	// RowsPerSecond is rows read in the pass per second of the pass.
	RowsPerSecond float64 `json:"rows_per_second"`
	// KeyspaceDone is the share of the keyspace behind the ranges' cursors.
	KeyspaceDone float64  `json:"keyspace_done"`
	ETASeconds   *float64 `json:"eta_seconds,omitempty"` // only while running
	// UnderOld counts rows still under OLD now (nil with --no-scan);
	// UnderOldBehind those in ranges the pass already finished, which only
	// a rerun (the next pass) takes.
	UnderOld       *int64 `json:"under_old,omitempty"`
	UnderOldBehind *int64 `json:"under_old_in_finished_ranges,omitempty"`

	Quarantine struct {
		Total   int64             `json:"total"`   // ever, in any pass of the run
		Current int64             `json:"current"` // seen again in this pass
		ByClass map[string]int64  `json:"by_class"`
		Rows    []QuarantineEntry `json:"rows"`
	} `json:"quarantine"`
	Hint string `json:"hint,omitempty"`

	RangeDetail []RangeStatus `json:"range_detail"`
}

// QuarantineEntry is one quarantined row: id and class, never bytes.
type QuarantineEntry struct {
	RowID    string    `json:"row_id"`
	Class    string    `json:"error_class"`
	LastSeen time.Time `json:"last_seen"`
}

// RangeStatus is one range of the pass.
type RangeStatus struct {
	Range          int        `json:"range"`
	State          string     `json:"state"` // pending | paused | running | stale | done
	Owner          string     `json:"owner,omitempty"`
	Lower          *string    `json:"lower,omitempty"`
	Upper          *string    `json:"upper,omitempty"`
	Cursor         *string    `json:"cursor,omitempty"`
	LeaseExpiresAt *time.Time `json:"lease_expires_at,omitempty"`
	Claims         int        `json:"claims"`
	Pages          int64      `json:"pages"`
	Rows           RowCounts  `json:"rows"`
	UnderOld       *int64     `json:"under_old,omitempty"`
	Done           *float64   `json:"done,omitempty"` // share of the range behind the cursor
	RowsPerSecond  float64    `json:"rows_per_second"`
	ETASeconds     *float64   `json:"eta_seconds,omitempty"`
	StartedAt      *time.Time `json:"started_at,omitempty"`
	FinishedAt     *time.Time `json:"finished_at,omitempty"`
}

// BuildRunStatus computes the state, shares, rates and ETAs of run r from
// its ranges at the database's time now. Quarantine, RunTotal, UnderOld
// and Hint are left to the caller.
func BuildRunStatus(idType string, r RunInfo, ranges []RangeInfo, now time.Time) RunStatus {
	rs := RunStatus{RunID: r.ID, OldKeyARN: r.OldARN, NewKeyARN: r.NewARN, Mode: r.Mode, Namespace: r.Namespace,
		Pass: r.Pass, PassStartedAt: r.PassStartedAt, PassFinishedAt: r.PassFinishedAt, RangeDetail: []RangeStatus{}}
	var total Counts
	var doneShare float64
	for _, rg := range ranges {
		d := RangeStatus{Range: rg.Range, Owner: rg.Owner, Lower: rg.Lower, Upper: rg.Upper, Cursor: rg.Cursor,
			Claims: rg.Claims, Pages: rg.Pages, Rows: RowCountsOf(rg.Counts), StartedAt: rg.StartedAt, FinishedAt: rg.FinishedAt}
		total = total.Add(rg.Counts)
		rs.Ranges.Total++
		switch {
		case rg.State == "done":
			d.State = "done"
			rs.Ranges.Done++
		case rg.State == "running" && rg.LeaseLive:
			d.State = "running"
			d.LeaseExpiresAt = rg.LeaseExpiresAt
			rs.Ranges.Running++
			rs.Ranges.LiveLeases++
		case rg.State == "running":
			d.State = "stale"
			d.LeaseExpiresAt = rg.LeaseExpiresAt
			rs.Ranges.Stale++
		case rg.Cursor != nil:
			d.State = "paused" // released on shutdown, part done
			rs.Ranges.Pending++
			rs.Ranges.Paused++
		default:
			d.State = "pending"
			rs.Ranges.Pending++
		}
		share := RangeShare(idType, rg)
		if share != nil {
			d.Done = share
			doneShare += *share
		} else if rg.Cursor != nil {
			doneShare += 0.5 // an open-ended integer range: progress unknown
		}
		if rg.StartedAt != nil {
			end := now
			if rg.UpdatedAt != nil && d.State != "running" {
				end = *rg.UpdatedAt
			}
			if secs := end.Sub(*rg.StartedAt).Seconds(); secs > 0 {
				d.RowsPerSecond = round2(float64(rg.Counts.Rows()) / secs)
			}
			if d.State == "running" && share != nil && *share > 0 {
				eta := round2(now.Sub(*rg.StartedAt).Seconds() * (1 - *share) / *share)
				d.ETASeconds = &eta
			}
		}
		rs.RangeDetail = append(rs.RangeDetail, d)
	}
	rs.Rows = RowCountsOf(total)
	if rs.Ranges.Total > 0 {
		rs.KeyspaceDone = round2(doneShare / float64(rs.Ranges.Total))
	}
	switch {
	case r.PassFinishedAt != nil:
		rs.State = "done"
	case rs.Ranges.LiveLeases > 0:
		rs.State = "running"
	default:
		rs.State = "stopped" // no process holds a lease: rerun `reencrypt run` to resume
	}
	if r.PassStartedAt != nil {
		end := now
		if r.PassFinishedAt != nil {
			end = *r.PassFinishedAt
		}
		elapsed := end.Sub(*r.PassStartedAt).Seconds()
		rs.ElapsedSeconds = round2(elapsed)
		if elapsed > 0 {
			rs.RowsPerSecond = round2(float64(total.Rows()) / elapsed)
		}
		if rs.State == "running" && rs.KeyspaceDone > 0 {
			eta := round2(elapsed * (1 - rs.KeyspaceDone) / rs.KeyspaceDone)
			rs.ETASeconds = &eta
		}
	}
	return rs
}

// AddUnderOld sets the rows still under OLD from a scan: per[i] in range i,
// the last entry beyond a closed last range.
func (rs *RunStatus) AddUnderOld(per []int64) {
	var all, behind int64
	for i := range rs.RangeDetail {
		n := per[i]
		rs.RangeDetail[i].UnderOld = &n
		all += n
		if rs.RangeDetail[i].State == "done" {
			behind += n
		}
	}
	all += per[len(per)-1]
	rs.UnderOld, rs.UnderOldBehind = &all, &behind
}

// RangeShare is the share of a range's keyspace behind its cursor, from the
// ids' values: uuids over 128 bits, integers between the bounds. nil when it
// cannot be known (an open integer bound).
func RangeShare(idType string, rg RangeInfo) *float64 {
	one, zero := 1.0, 0.0
	switch {
	case rg.State == "done":
		return &one
	case rg.Cursor == nil:
		return &zero
	}
	var lo, hi, cur *big.Int
	if idType == "uuid" {
		lo, hi = big.NewInt(0), new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 128), big.NewInt(1))
		if rg.Lower != nil {
			lo = uuidInt(*rg.Lower)
		}
		if rg.Upper != nil {
			hi = uuidInt(*rg.Upper)
		}
		cur = uuidInt(*rg.Cursor)
	} else {
		if rg.Lower == nil || rg.Upper == nil {
			return nil
		}
		lo, hi, cur = decInt(*rg.Lower), decInt(*rg.Upper), decInt(*rg.Cursor)
	}
	if lo == nil || hi == nil || cur == nil {
		return nil
	}
	span := new(big.Int).Sub(hi, lo)
	if span.Sign() <= 0 {
		return nil
	}
	f, _ := new(big.Rat).SetFrac(new(big.Int).Sub(cur, lo), span).Float64()
	f = round2(min(max(f, 0), 1))
	return &f
}

func uuidInt(s string) *big.Int {
	v, ok := new(big.Int).SetString(strings.ReplaceAll(s, "-", ""), 16)
	if !ok {
		return nil
	}
	return v
}

func decInt(s string) *big.Int {
	v, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return nil
	}
	return v
}

// round2 keeps JSON numbers readable.
func round2(f float64) float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0
	}
	return math.Round(f*100) / 100
}
