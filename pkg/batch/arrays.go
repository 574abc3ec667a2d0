package batch

import (
	"encoding/binary"
	"errors"
	"math"
	"slices"

	"github.com/jackc/pgx/v5/pgtype"
)

// A page's swap sends its 1,000 ids and 2 × 1,000 tokens as three array
// parameters. pgx encodes an array element by element through its generic
// plans, into a parameter buffer it regrows from 256 bytes for every query:
// about 1.2 ms of CPU and 4 MB of garbage per page, for 0.7 MB of
// parameters (a sixth of the engine's CPU in a second rotation, and much of
// its GC). pageIDs and pageTokens are the same values with an encoder that
// sizes the buffer once and copies each element in, byte for byte what pgx
// sends (TestArrayEncodingMatchesPgx). useFastArrays installs it on a
// connection's type map; on a map without it they encode as plain
// []string and [][]byte do.

// pageIDs are ids sent as a text[] parameter.
type pageIDs []string

// pageTokens are tokens sent as a bytea[] parameter.
type pageTokens [][]byte

// fastArrayCodec is the codec pgx registered for text[] or bytea[], with
// a sized binary encoder for pageIDs and pageTokens; anything else goes to
// the codec it wraps.
type fastArrayCodec struct {
	pgtype.Codec
	elemOID uint32
}

func (c fastArrayCodec) PlanEncode(m *pgtype.Map, oid uint32, format int16, value any) pgtype.EncodePlan {
	if format == pgtype.BinaryFormatCode {
		switch value.(type) {
		case pageIDs, pageTokens:
			return arrayPlan{elemOID: c.elemOID}
		}
	}
	return c.Codec.PlanEncode(m, oid, format, value)
}

// useFastArrays wraps the text[] and bytea[] codecs of a connection's type
// map, once (a map is one connection's, used by one goroutine at a time).
func useFastArrays(m *pgtype.Map) {
	for _, a := range [...]struct{ array, elem uint32 }{
		{pgtype.TextArrayOID, pgtype.TextOID},
		{pgtype.ByteaArrayOID, pgtype.ByteaOID},
	} {
		t, ok := m.TypeForOID(a.array)
		if !ok {
			continue
		}
		if _, done := t.Codec.(fastArrayCodec); done {
			continue
		}
		m.RegisterType(&pgtype.Type{Name: t.Name, OID: t.OID, Codec: fastArrayCodec{Codec: t.Codec, elemOID: a.elem}})
	}
}

// arrayPlan writes a one-dimensional array in Postgres's binary array
// format: ndim, has-null flag, element type, then length and lower bound of
// the one dimension, then each element as length (-1 for a nil token, NULL)
// and bytes.
type arrayPlan struct{ elemOID uint32 }

func (p arrayPlan) Encode(value any, buf []byte) ([]byte, error) {
	var n, size int
	hasNull := uint32(0)
	switch v := value.(type) {
	case pageIDs:
		n = len(v)
		for _, s := range v {
			size += len(s)
		}
	case pageTokens:
		n = len(v)
		for _, b := range v {
			size += len(b)
			if b == nil {
				hasNull = 1
			}
		}
	}
	if n > math.MaxInt32 || size > math.MaxInt32 {
		return nil, errors.New("array parameter over 2 GiB")
	}
	buf = slices.Grow(buf, 20+4*n+size)
	buf = binary.BigEndian.AppendUint32(buf, 1) // one dimension, even when empty, as pgx sends it
	buf = binary.BigEndian.AppendUint32(buf, hasNull)
	buf = binary.BigEndian.AppendUint32(buf, p.elemOID)
	buf = binary.BigEndian.AppendUint32(buf, uint32(n))
	buf = binary.BigEndian.AppendUint32(buf, 1) // lower bound
	switch v := value.(type) {
	case pageIDs:
		for _, s := range v {
			buf = binary.BigEndian.AppendUint32(buf, uint32(len(s)))
			buf = append(buf, s...)
		}
	case pageTokens:
		for _, b := range v {
			if b == nil {
				buf = binary.BigEndian.AppendUint32(buf, math.MaxUint32) // -1: NULL
				continue
			}
			buf = binary.BigEndian.AppendUint32(buf, uint32(len(b)))
			buf = append(buf, b...)
		}
	}
	return buf, nil
}
