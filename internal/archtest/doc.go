// Package archtest holds tests of the code's shape, not of its behaviour:
// rules of issue 13 checked by parsing the source (go/parser), so that a
// change that breaks one fails `go test` rather than a later review.
package archtest
