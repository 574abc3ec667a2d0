package main

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"strings"
	"text/tabwriter"

	"github.com/jackc/pgx/v5"
)

// Postgres-side timing per statement (-statements): the server runs with
// pg_stat_statements (track = all, so the statements inside the ceiling's
// procedure count too), and each scenario reports its database's statements
// by total execution time. Off by default: the extension's bookkeeping is
// itself a cost on every statement.
var statementSettings = []string{
	"shared_preload_libraries=pg_stat_statements",
	"pg_stat_statements.track=all",
	"pg_stat_statements.max=1000",
}

// stmtStat is one statement's share of a scenario's server time.
type stmtStat struct {
	Query    string  `json:"query"`
	Calls    int64   `json:"calls"`
	TotalMs  float64 `json:"total_ms"`
	MsPerK   float64 `json:"ms_per_1000_rows"`
	RowsPerC float64 `json:"rows_per_call"`
}

// resetStatements clears the counters of the scenario's database.
func resetStatements(ctx context.Context, dbURL string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err != nil {
		return fmt.Errorf("-statements: %w", err)
	}
	_, err = conn.Exec(ctx, `SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0)`)
	return err
}

var spaces = regexp.MustCompile(`\s+`)

// readStatements returns the database's statements that took at least 1 %
// of its execution time, longest first.
func readStatements(ctx context.Context, dbURL string, rows int64) ([]stmtStat, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rs, err := conn.Query(ctx, `
		SELECT query, calls, total_exec_time, rows FROM pg_stat_statements
		WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND query NOT LIKE '%pg_stat_statements%'
		  AND total_exec_time >= 0.01 * (SELECT sum(total_exec_time) FROM pg_stat_statements
		      WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()))
		ORDER BY total_exec_time DESC LIMIT 12`)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []stmtStat
	for rs.Next() {
		var s stmtStat
		var n int64
		if err := rs.Scan(&s.Query, &s.Calls, &s.TotalMs, &n); err != nil {
			return nil, err
		}
		s.Query = strings.TrimSpace(spaces.ReplaceAllString(s.Query, " "))
		if len(s.Query) > 110 {
			s.Query = s.Query[:110] + "…"
		}
		if rows > 0 {
			s.MsPerK = 1000 * s.TotalMs / float64(rows)
		}
		if s.Calls > 0 {
			s.RowsPerC = float64(n) / float64(s.Calls)
		}
		out = append(out, s)
	}
	return out, rs.Err()
}

// printStatements prints the last round's statements of each scenario.
func (rep *report) printStatements(w io.Writer) {
	last := map[string]*Result{}
	for _, r := range rep.Results {
		if len(r.Statements) > 0 {
			last[r.Scenario] = r
		}
	}
	if len(last) == 0 {
		return
	}
	fmt.Fprintln(w, "\nPostgres time by statement (pg_stat_statements, track=all; last round; statements >= 1 % of the scenario's time):")
	for _, sc := range allScenarios {
		r := last[sc]
		if r == nil {
			continue
		}
		fmt.Fprintf(w, "  %s (round %d):\n", titles[sc], r.Round)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "    ms/1000 rows\tcalls\trows/call\tstatement")
		for _, s := range r.Statements {
			fmt.Fprintf(tw, "    %.2f\t%d\t%.0f\t%s\n", s.MsPerK, s.Calls, s.RowsPerC, s.Query)
		}
		tw.Flush()
	}
}
