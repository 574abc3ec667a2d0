package main

// The scenarios that write no envelope (0, 0b and 0c) still have to write
// what a rotation writes. When a row's new version stays on its page,
// Postgres logs only the bytes between the old and new tuples' common prefix
// and common suffix. A re-encryption keeps the token's header and the
// kid's account and region, and changes the rest: the key id, wdek, nonce
// and ciphertext. Flipping the first byte of the key id (the kid's last 36
// characters, a uuid) and the token's last byte leaves exactly that prefix
// and no suffix in common, so the update record is as large as a real
// rotation's, for the price of two byte flips. Flipping only the last byte,
// as these scenarios did until 2026-12-05, made the record about 230 B
// smaller than the engine's (bench/results/2026-12-05-300k-walstats.txt).

// keyIDLen is the length of a key id at the end of a KMS key ARN.
const keyIDLen = 36

// rotationChangeSQL is rotationChange as an SQL function for scenario 0's
// procedure (36 is keyIDLen); the planner inlines it.
const rotationChangeSQL = `
CREATE FUNCTION bench_ceiling.rotation_change(tok bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT AS $$
	SELECT CASE WHEN k = last THEN flipped ELSE set_byte(flipped, k, get_byte(flipped, k) # 1) END
	FROM (SELECT length(tok) - 1 AS last,
	             set_byte(tok, length(tok) - 1, get_byte(tok, length(tok) - 1) # 1) AS flipped,
	             least(4 + greatest(get_byte(tok, 2) * 256 + get_byte(tok, 3) - 36, 0), length(tok) - 1) AS k) AS at
$$;`

// rotationChange returns a copy of tok changed where a rotation changes it
// (see above). Applied twice it gives tok back, so the scenarios can swap a
// table's tokens back and forth.
func rotationChange(tok []byte) []byte {
	out := append([]byte(nil), tok...)
	if len(out) == 0 {
		return out
	}
	last := len(out) - 1
	out[last] ^= 1
	if len(out) >= 4 {
		kidLen := int(out[2])<<8 | int(out[3])
		if k := min(4+max(kidLen-keyIDLen, 0), last); k != last {
			out[k] ^= 1
		}
	}
	return out
}
