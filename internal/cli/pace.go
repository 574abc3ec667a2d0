package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/pflag"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/pacer"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

func init() {
	steering := vars(varsDB, []string{"TABLE_SCHEMA", "TABLE"})
	registerCommand(command{path: []string{"pause"}, summary: "stop every pod of the run on TABLE before its next page (they keep their leases)",
		vars: steering, setup: func(fs *pflag.FlagSet) runFunc {
			reason := fs.String("reason", "", "why, recorded with the event (who: the database role)")
			wait := fs.Duration("wait", 10*time.Second, "wait this long for every live pod to report paused (0: do not wait)")
			return func(ctx context.Context, a *app, _ []string) error {
				return steer(ctx, a, "paused", *wait, func(c *checkpoint.Controls) { c.Paused, c.Reason = true, *reason })
			}
		}})
	registerCommand(command{path: []string{"resume"}, summary: "let the pods of the run on TABLE go on after a pause",
		vars: steering, setup: func(fs *pflag.FlagSet) runFunc {
			reason := fs.String("reason", "", "why, recorded with the event")
			return func(ctx context.Context, a *app, _ []string) error {
				return steer(ctx, a, "resumed", 0, func(c *checkpoint.Controls) { c.Paused, c.Reason = false, *reason })
			}
		}})
	registerCommand(command{path: []string{"throttle"}, summary: "cap the KMS requests/s and rows/s of every pod on TABLE, for the whole Job (0 lifts a cap)",
		vars: steering, setup: func(fs *pflag.FlagSet) runFunc {
			kmsRate := fs.Float64("kms-rate", -1, "KMS requests per second for the whole Job, below KMS_RATE_LIMIT (0 lifts the cap; unset: unchanged)")
			rowsRate := fs.Float64("rows-rate", -1, "rows per second for the whole Job, below MAX_ROWS_PER_SECOND (0 lifts the cap; unset: unchanged)")
			reason := fs.String("reason", "", "why, recorded with the event")
			return func(ctx context.Context, a *app, _ []string) error {
				if *kmsRate < 0 && *rowsRate < 0 {
					return usageErrorf("needs --kms-rate N or --rows-rate N (0 lifts a cap)")
				}
				return steer(ctx, a, "throttled", 0, func(c *checkpoint.Controls) {
					if *kmsRate >= 0 {
						c.KMSRate = *kmsRate
					}
					if *rowsRate >= 0 {
						c.RowsRate = *rowsRate
					}
					c.Reason = *reason
				})
			}
		}})
}

// scope is what the operator steers: every pod working on TABLE.
func (a *app) scope() string { return a.cfg.TableSchema + "." + a.cfg.Table }

// steer records an operator's order and shows the pods that will obey it.
func steer(ctx context.Context, a *app, event string, wait time.Duration, change func(*checkpoint.Controls)) error {
	db, err := a.db(ctx)
	if err != nil {
		return err
	}
	store := checkpoint.New(db, a.cfg.StateSchema)
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	c, err := store.SetControls(ctx, a.scope(), event, change)
	if err != nil {
		return err
	}
	a.log.InfoContext(ctx, "controls changed", "table", a.scope(), "event", event, "paused", c.Paused,
		"kms_rate", c.KMSRate, "rows_rate", c.RowsRate, "by", c.UpdatedBy)
	fmt.Fprintf(a.stdout, "%s: %s by %s at %s\n", a.scope(), describeControls(c), c.UpdatedBy, shortTime(c.UpdatedAt))
	pods, err := store.Pacers(ctx, a.scope(), 5*time.Second)
	for deadline := time.Now().Add(wait); err == nil && c.Paused && !allPaused(pods) && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		pods, err = store.Pacers(ctx, a.scope(), 5*time.Second)
	}
	if err != nil {
		return tempErr(err)
	}
	printPods(a.stdout, pods)
	if c.Paused && wait > 0 && !allPaused(pods) {
		return tempErr(fmt.Errorf("not every live pod reported paused within %s; `reencrypt status` shows them", wait))
	}
	return nil
}

func allPaused(pods []checkpoint.PacerReport) bool {
	for _, p := range pods {
		if p.State != "paused" {
			return false
		}
	}
	return true
}

func describeControls(c checkpoint.Controls) string {
	var parts []string
	if c.Paused {
		parts = append(parts, "paused")
	} else {
		parts = append(parts, "running")
	}
	if c.KMSRate > 0 {
		parts = append(parts, fmt.Sprintf("KMS capped at %g requests/s", c.KMSRate))
	}
	if c.RowsRate > 0 {
		parts = append(parts, fmt.Sprintf("rows capped at %g/s", c.RowsRate))
	}
	s := strings.Join(parts, ", ")
	if c.Reason != "" {
		s += " (" + c.Reason + ")"
	}
	return s
}

func printPods(w io.Writer, pods []checkpoint.PacerReport) {
	if len(pods) == 0 {
		fmt.Fprintln(w, "no live pod on this table (a pod reads the controls before every page)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "POD\tSTATE\tWHY\tKMS BUDGET/s\tSEEN\n")
	for _, p := range pods {
		budget := "unlimited"
		if p.KMSRate > 0 {
			budget = fmt.Sprintf("%.0f", p.KMSRate)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Owner, p.State, dash(strings.Join(p.Reasons, ", ")), budget, p.SeenAt.UTC().Format(time.TimeOnly))
	}
	tw.Flush()
}

// startPacer builds this process's pacer and runs it until stop is called
// (after the engine has finished: it goes on through a graceful stop).
func (a *app) startPacer(ctx context.Context, db *pgxpool.Pool, store *checkpoint.Store, t *tokentable.Table) (*pacer.Pacer, func(), error) {
	var replicas []pacer.Querier
	var pools []*pgxpool.Pool
	closeAll := func() {
		for _, p := range pools {
			p.Close()
		}
	}
	for i, u := range a.cfg.Replicas() {
		pc, err := pgxpool.ParseConfig(u)
		if err != nil {
			closeAll()
			return nil, nil, configError("REPLICA_URLS entry %d: %s", i+1, redactErr(err))
		}
		pc.MaxConns = 1
		pinSession(pc)
		if err := a.iamAuth(ctx, pc, fmt.Sprintf("REPLICA_URLS entry %d", i+1)); err != nil {
			closeAll()
			return nil, nil, err
		}
		pool, err := pgxpool.NewWithConfig(ctx, pc)
		if err != nil {
			closeAll()
			return nil, nil, configError("REPLICA_URLS entry %d: %s", i+1, redactErr(err))
		}
		pools = append(pools, pool)
		replicas = append(replicas, pool)
	}
	p := pacer.New(pacer.Config{
		Table: t.Qualified(), Owner: a.owner(), KMSRateLimit: a.cfg.KMSRateLimit,
		MaxRowsPerSecond: a.cfg.MaxRowsPerSecond, MaxReplicaLag: a.cfg.MaxReplicaLag,
		Replicas: replicas, PageRows: a.cfg.BatchSize,
	}, pacer.Deps{DB: db, Store: store, Budget: a.budget, Log: a.log, Metrics: a.metrics})
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(pctx)
	}()
	a.pacer = p
	return p, func() { cancel(); <-done; closeAll() }, nil
}
