package batch

// TransformFunc is a benchmark seam, never set in production: when
// Config.Transform is not nil, the engine skips KMS and AES entirely and
// writes, for every row under OLD, the token Transform returns. Everything
// else stays the engine's own path — keyset pages, classification by kid,
// one transaction per page with the fence, the compare-and-swap UPDATE with
// its audit rows, and the checkpoint advance — so bench/ can measure the
// Postgres ceiling of that path ("scenario 1": Transform returns a copy of
// the old token). There is no self-check: the result is written as is.
//
// It must be safe for concurrent use (RangeWorkers pages run at once). An
// error fails the page like a KMS error would (rolled back, retried).
type TransformFunc func(id string, token []byte) ([]byte, error)

// transform is rotate's path when Config.Transform is set: every row grouped
// for rotation (under OLD) gets Transform's token.
func (e *Engine) transform(rows []row, groups map[string][]int, res []result) ([]result, error) {
	for _, idx := range groups {
		for _, i := range idx {
			b, err := e.cfg.Transform(rows[i].id, rows[i].token)
			if err != nil {
				return nil, err
			}
			res[i] = result{outcome: outRotate, newToken: b}
		}
	}
	return res, nil
}
