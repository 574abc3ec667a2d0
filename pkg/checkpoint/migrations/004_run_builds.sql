-- Which build of reencrypt worked on a run (version@revision, "-dirty" for an
-- uncommitted tree; see internal/buildinfo), part of the audit story:
--   first_build    the build of the process that created the run; NULL for a
--                  run created before this migration (unknown, not guessed)
--   last_build     the build of the latest process to join it, whatever the
--                  pass (a rerun with a newer image, a pod of a rolling update)
--   last_build_at  when that process joined
-- A process's own build is also in its process_started event
-- (events.details->>'build', with its owner), the whole history of a run.
ALTER TABLE {{.schema}}.runs
	ADD COLUMN IF NOT EXISTS first_build   text,
	ADD COLUMN IF NOT EXISTS last_build    text,
	ADD COLUMN IF NOT EXISTS last_build_at timestamptz;
