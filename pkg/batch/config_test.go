package batch_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// TestConfigRefusesTimeoutsUnderTheirMinimums: a library caller (not only
// the command, whose package config checks the variables) cannot build an
// engine whose pages time out at once (PageTimeout), whose row-lock wait
// rounds down to nothing (LockTimeout) or that has no time to finish the
// page in flight on shutdown (StopGrace). Zero still means the default.
func TestConfigRefusesTimeoutsUnderTheirMinimums(t *testing.T) {
	base := batch.Config{Table: &tokentable.Table{}, Mode: batch.Rekey,
		Old:       kmsclient.Key{ARN: "arn:aws:kms:us-east-1:000000000000:key/old"},
		New:       kmsclient.Key{ARN: "arn:aws:kms:us-east-1:000000000000:key/new"},
		BatchSize: 1000, Workers: 1, RangeWorkers: 1, Ranges: 1, LeaseTTL: 30 * time.Second,
		PageTimeout: batch.MinPageTimeout, LockTimeout: batch.MinLockTimeout, StopGrace: batch.MinStopGrace}
	if err := base.Validate(); err != nil {
		t.Fatalf("the minimums themselves refused: %v", err)
	}
	for _, tc := range []struct {
		field batch.Field
		set   func(*batch.Config)
	}{
		{batch.FieldPageTimeout, func(c *batch.Config) { c.PageTimeout = batch.MinPageTimeout - time.Millisecond }},
		{batch.FieldPageTimeout, func(c *batch.Config) { c.PageTimeout = -time.Minute }},
		{batch.FieldLockTimeout, func(c *batch.Config) { c.LockTimeout = time.Microsecond }},
		{batch.FieldStopGrace, func(c *batch.Config) { c.StopGrace = batch.MinStopGrace / 2 }},
	} {
		c := base
		tc.set(&c)
		err := c.Validate()
		var fe *batch.FieldError
		if !errors.As(err, &fe) || !slices.Contains(fe.Fields, tc.field) {
			t.Errorf("%s: Validate() = %v, want a FieldError naming %q", tc.field, err, tc.field)
		}
	}
}
