package census

import (
	"hash/maphash"
	"math"
	"math/bits"
)

// ExactDistinctLimit is how many distinct wrapped keys are counted exactly
// (a set of 64-bit hashes, a few MiB); above it the HyperLogLog estimate is
// reported instead, so memory stays fixed whatever the table size.
const ExactDistinctLimit = 1 << 18

const hllP = 14 // 2^14 one-byte registers: 16 KiB, standard error 1.04/sqrt(2^14) ≈ 0.8 %

// distinct counts distinct byte strings: exactly while few, by HyperLogLog
// once the exact set would grow past ExactDistinctLimit.
type distinct struct {
	exact map[uint64]struct{} // nil once overflowed
	reg   [1 << hllP]uint8
}

func newDistinct() *distinct { return &distinct{exact: map[uint64]struct{}{}} }

func (d *distinct) add(b []byte) {
	h := maphash.Bytes(hashSeed, b)
	if d.exact != nil {
		d.exact[h] = struct{}{}
		if len(d.exact) > ExactDistinctLimit {
			d.exact = nil
		}
	}
	idx := h >> (64 - hllP)
	w := h<<hllP | 1<<(hllP-1) // the guard bit bounds the rank
	rank := uint8(bits.LeadingZeros64(w)) + 1
	if rank > d.reg[idx] {
		d.reg[idx] = rank
	}
}

// count returns the number of distinct strings added and whether it is exact.
func (d *distinct) count() (int64, bool) {
	if d.exact != nil {
		return int64(len(d.exact)), true
	}
	return d.estimate(), false
}

func (d *distinct) estimate() int64 {
	const m = float64(1 << hllP)
	var sum float64
	zeros := 0
	for _, r := range d.reg {
		sum += math.Ldexp(1, -int(r))
		if r == 0 {
			zeros++
		}
	}
	alpha := 0.7213 / (1 + 1.079/m)
	e := alpha * m * m / sum
	if e <= 2.5*m && zeros > 0 { // small range: linear counting is better
		e = m * math.Log(m/float64(zeros))
	}
	return int64(math.Round(e))
}
