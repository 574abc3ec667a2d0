-- Every table a run or `keys begin` has seen for a key: keys retire and
-- keys schedule-deletion count the rows under the key in all of them, not
-- only in the table the configuration names at that moment.
CREATE TABLE IF NOT EXISTS {{.schema}}.key_tables (
	key_arn       text NOT NULL,
	table_schema  text NOT NULL,
	table_name    text NOT NULL,
	token_column  text NOT NULL,
	id_column     text NOT NULL,
	namespace     text NOT NULL,
	first_seen_at timestamptz NOT NULL DEFAULT now(),
	last_seen_at  timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (key_arn, table_schema, table_name, token_column)
);
