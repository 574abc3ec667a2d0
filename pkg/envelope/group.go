package envelope

// WDEKGroup is the envelopes of a batch that share one wrapped data key:
// one KMS call unwraps (or re-wraps) the key for all of them.
type WDEKGroup struct {
	WDEK []byte
	Rows []int // indexes into the envelopes given to GroupByWDEK
}

// GroupByWDEK groups envs by wrapped data key, in the order each key first
// appears; nil envelopes (rows left out) are skipped. The engine's pages and
// verify group the same way.
func GroupByWDEK(envs []*Envelope) []WDEKGroup {
	at := map[string]int{}
	var groups []WDEKGroup
	for i, e := range envs {
		if e == nil {
			continue
		}
		n, ok := at[string(e.WDEK)]
		if !ok {
			n = len(groups)
			at[string(e.WDEK)] = n
			groups = append(groups, WDEKGroup{WDEK: e.WDEK})
		}
		groups[n].Rows = append(groups[n].Rows, i)
	}
	return groups
}
