package census

import (
	"strconv"
	"strings"
)

// CompareIDs orders two ids in canonical text the way Postgres orders the
// column: uuids by bytes (lowercase hex text sorts the same), integers by
// value.
func CompareIDs(idType, a, b string) int {
	if idType == "uuid" {
		return strings.Compare(a, b)
	}
	x, errA := strconv.ParseInt(a, 10, 64)
	y, errB := strconv.ParseInt(b, 10, 64)
	if errA != nil || errB != nil {
		return strings.Compare(a, b)
	}
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// Locate returns the index of the range (lower, upper] that holds id, given
// the ranges' upper bounds in order, the last one open (nil); len(uppers)
// when no range does (a closed last range).
func Locate(idType string, uppers []*string, id string) int {
	lo, hi := 0, len(uppers)
	for lo < hi {
		mid := (lo + hi) / 2
		if uppers[mid] == nil || CompareIDs(idType, id, *uppers[mid]) <= 0 {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}
