package main

import (
	"github.com/reencrypt/reencrypt/pkg/batch"
)

// explainRefusal adds to a refusal what this configuration can tell: for
// a missing privilege, the GRANT that gives it.
func (a *app) explainRefusal(r *batch.RefusedError) error {
	return r
}
