package batch

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

// The sized encoder must send exactly what pgx sends for the same values:
// the bytes are the wire contract with Postgres's array_recv.
func TestArrayEncodingMatchesPgx(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	randBytes := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		return b
	}
	tokenCases := map[string][][]byte{
		"empty":          {},
		"one":            {randBytes(330)},
		"empty element":  {{}, randBytes(3)},
		"nil element":    {randBytes(5), nil, randBytes(7)},
		"page of tokens": nil,
	}
	for range 1000 {
		tokenCases["page of tokens"] = append(tokenCases["page of tokens"], randBytes(300+rng.IntN(60)))
	}
	idCases := map[string][]string{
		"empty":       {},
		"one":         {"0190b4c5-8f3e-7a21-9d4e-1b2c3d4e5f60"},
		"empty id":    {"", "x"},
		"unicode ids": {"clé-1", "鍵-2"},
		"page of ids": nil,
	}
	for i := range 1000 {
		idCases["page of ids"] = append(idCases["page of ids"], string(randBytes(i%40)))
	}

	plain := pgtype.NewMap()
	fast := pgtype.NewMap()
	useFastArrays(fast)
	useFastArrays(fast) // twice: wraps once
	if tt, _ := fast.TypeForOID(pgtype.ByteaArrayOID); tt.Codec.(fastArrayCodec).Codec == nil {
		t.Fatal("bytea[] codec not wrapped")
	}
	if _, twice := mustType(t, fast, pgtype.TextArrayOID).Codec.(fastArrayCodec).Codec.(fastArrayCodec); twice {
		t.Fatal("useFastArrays wrapped text[] twice")
	}

	check := func(t *testing.T, oid uint32, want, got any) {
		t.Helper()
		prefix := []byte("earlier parameter") // the encoder appends to the query's buffer
		w, err := plain.Encode(oid, pgtype.BinaryFormatCode, want, bytes.Clone(prefix))
		if err != nil {
			t.Fatal(err)
		}
		g, err := fast.Encode(oid, pgtype.BinaryFormatCode, got, bytes.Clone(prefix))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(w, g) {
			t.Fatalf("encodings differ:\npgx  %x\nfast %x", w[:min(len(w), 64)], g[:min(len(g), 64)])
		}
	}
	for name, c := range tokenCases {
		t.Run("bytea[] "+name, func(t *testing.T) { check(t, pgtype.ByteaArrayOID, c, pageTokens(c)) })
	}
	for name, c := range idCases {
		t.Run("text[] "+name, func(t *testing.T) { check(t, pgtype.TextArrayOID, c, pageIDs(c)) })
	}
}

func mustType(t *testing.T, m *pgtype.Map, oid uint32) *pgtype.Type {
	t.Helper()
	tt, ok := m.TypeForOID(oid)
	if !ok {
		t.Fatalf("no type for OID %d", oid)
	}
	return tt
}

// A page's token array costs one allocation (the buffer, sized once), not
// one or more per token.
func TestArrayEncodingAllocatesOnce(t *testing.T) {
	toks := make(pageTokens, 1000)
	for i := range toks {
		toks[i] = make([]byte, 330)
	}
	var arg any = toks // a query's arguments arrive boxed
	m := pgtype.NewMap()
	useFastArrays(m)
	allocs := testing.AllocsPerRun(20, func() {
		if _, err := m.Encode(pgtype.ByteaArrayOID, pgtype.BinaryFormatCode, arg, make([]byte, 0, 256)); err != nil {
			t.Fatal(err)
		}
	})
	// The 256-byte buffer of the call and the grown one (one more under the
	// race detector); pgx's own plan made 3,038 for these 1,000 tokens.
	if allocs > 3 {
		t.Fatalf("encoding 1,000 tokens allocated %.0f times, want at most 3 (not one per token)", allocs)
	}
}
