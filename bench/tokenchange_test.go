package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/envelope"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// rotationChange leaves in common with the old token exactly what a real
// rotation does (the header and the kid up to its key id), changes the last
// byte so that no suffix is in common either, and scenario 0's SQL function
// does the same bytes as scenario 0c's Go.
func TestRotationChangeMatchesARotation(t *testing.T) {
	const region = "arn:aws:kms:eu-west-1:111122223333:key/"
	oldKID, newKID := region+"0b6f1a8e-0f3a-4c1e-9a57-1c0de5ab1e01", region+"8d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
	seal := func(kid string) []byte {
		dek, wdek := make([]byte, 32), make([]byte, 184)
		_, _ = rand.Read(dek)
		_, _ = rand.Read(wdek)
		env, err := envelope.SealRandom(dek, envelope.SealOptions{KID: kid, WDEK: wdek, Namespace: "payment_methods", RowID: "42"}, []byte("4111111111111111"))
		if err != nil {
			t.Fatal(err)
		}
		tok, err := env.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	common := func(a, b []byte) (prefix, suffix int) {
		for prefix < len(a) && prefix < len(b) && a[prefix] == b[prefix] {
			prefix++
		}
		for suffix < len(a)-prefix && suffix < len(b)-prefix && a[len(a)-1-suffix] == b[len(b)-1-suffix] {
			suffix++
		}
		return prefix, suffix
	}
	old := seal(oldKID)
	realPrefix, realSuffix := common(old, seal(newKID))
	changed := rotationChange(old)
	prefix, suffix := common(old, changed)
	if prefix != realPrefix || suffix != 0 || realSuffix > 1 {
		t.Errorf("common prefix/suffix with the old token: %d/%d, a real rotation's %d/%d", prefix, suffix, realPrefix, realSuffix)
	}
	if !bytes.Equal(rotationChange(changed), old) {
		t.Error("rotationChange applied twice does not give the token back")
	}

	// The last token has no kid: its first flip would be its last byte, so
	// only that one changes.
	tokens := [][]byte{old, seal(newKID), seal("short-kid"), {0x01, 0x01, 0x00, 0x00, 0x07}}
	flips := []int{2, 2, 2, 1}
	db, err := pgx.Connect(context.Background(), testbed.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	if _, err := db.Exec(context.Background(), "CREATE SCHEMA bench_ceiling;"+rotationChangeSQL); err != nil {
		t.Fatal(err)
	}
	for i, tok := range tokens {
		var got []byte
		if err := db.QueryRow(context.Background(), `SELECT bench_ceiling.rotation_change($1)`, tok).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if want := rotationChange(tok); !bytes.Equal(got, want) {
			t.Errorf("token %d: SQL and Go differ:\n%x\n%x", i, got, want)
		}
		if n := differing(tok, got); n != flips[i] {
			t.Errorf("token %d: %d bytes changed, want %d", i, n, flips[i])
		}
	}
}

func differing(a, b []byte) (n int) {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			n++
		}
	}
	return n + max(len(a), len(b)) - min(len(a), len(b))
}
