-- The state schema exactly as release 1 (checkpoint.Migrate before versioned
-- migrations) created it; %[1]s is the quoted schema. The upgrade test starts
-- from it.
CREATE SCHEMA IF NOT EXISTS %[1]s;
CREATE TABLE IF NOT EXISTS %[1]s.runs (
	run_id           text PRIMARY KEY,
	table_name       text NOT NULL,
	old_key_arn      text NOT NULL,
	new_key_arn      text NOT NULL,
	mode             text NOT NULL,
	namespace        text NOT NULL,
	pass             int  NOT NULL DEFAULT 0,
	pass_started_at  timestamptz,
	pass_finished_at timestamptz,
	created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS %[1]s.ranges (
	run_id           text NOT NULL REFERENCES %[1]s.runs ON DELETE CASCADE,
	pass             int  NOT NULL,
	range_no         int  NOT NULL,
	lower_bound      text,
	upper_bound      text,
	cursor           text,
	state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done')),
	owner            text,
	lease_token      bigint NOT NULL DEFAULT 0,
	lease_expires_at timestamptz,
	rows_rotated     bigint NOT NULL DEFAULT 0,
	rows_skipped     bigint NOT NULL DEFAULT 0,
	rows_other_key   bigint NOT NULL DEFAULT 0,
	rows_quarantined bigint NOT NULL DEFAULT 0,
	rows_conflicted  bigint NOT NULL DEFAULT 0,
	pages            bigint NOT NULL DEFAULT 0,
	claims           int    NOT NULL DEFAULT 0,
	started_at       timestamptz,
	finished_at      timestamptz,
	updated_at       timestamptz,
	PRIMARY KEY (run_id, pass, range_no)
);
CREATE SEQUENCE IF NOT EXISTS %[1]s.lease_tokens;
CREATE TABLE IF NOT EXISTS %[1]s.quarantine (
	run_id        text NOT NULL,
	row_id        text NOT NULL,
	error_class   text NOT NULL,
	pass          int  NOT NULL,
	first_seen_at timestamptz NOT NULL DEFAULT now(),
	last_seen_at  timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (run_id, row_id)
);
CREATE TABLE IF NOT EXISTS %[1]s.events (
	id      bigserial PRIMARY KEY,
	run_id  text NOT NULL,
	pass    int  NOT NULL,
	at      timestamptz NOT NULL DEFAULT now(),
	event   text NOT NULL,
	owner   text,
	details jsonb
);
