-- Steering a running rotation (`reencrypt pause | resume | throttle`) and the
-- pods sharing one KMS budget (package pacer). Both are per token table: an
-- operator steers every pod working on it, whatever run they are in.
CREATE TABLE IF NOT EXISTS {{.schema}}.controls (
	table_name text PRIMARY KEY,
	paused     boolean NOT NULL DEFAULT false,
	kms_rate   double precision CHECK (kms_rate > 0),  -- requests/s, whole Job; NULL: KMS_RATE_LIMIT
	rows_rate  double precision CHECK (rows_rate > 0), -- rows/s, whole Job; NULL: MAX_ROWS_PER_SECOND
	reason     text,
	updated_by text NOT NULL DEFAULT current_user,
	updated_at timestamptz NOT NULL DEFAULT now()
);
-- One row per live pod, refreshed every second: its KMS rate, when it last
-- slowed down for throttling (the others follow), and what holds it back.
CREATE TABLE IF NOT EXISTS {{.schema}}.pacers (
	table_name       text NOT NULL,
	owner            text NOT NULL,
	kms_rate         double precision,
	kms_decreased_at timestamptz,
	state            text NOT NULL,
	reasons          text[] NOT NULL DEFAULT '{}',
	seen_at          timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (table_name, owner)
);
-- Operator events belong to a table, not to a run.
ALTER TABLE {{.schema}}.events
	ALTER COLUMN run_id DROP NOT NULL,
	ALTER COLUMN pass DROP NOT NULL,
	ADD COLUMN IF NOT EXISTS table_name text;
