package buildinfo

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestFrom(t *testing.T) {
	stamped := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/reencrypt/reencrypt", Version: "v0.0.0-20261204055814-b748d2d5a1b3+dirty"},
		Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "b748d2d5a1b3c0ffee0000000000000000000000"},
			{Key: "vcs.time", Value: "2026-12-04T05:58:14Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	for _, tc := range []struct {
		name string
		bi   *debug.BuildInfo
		l    linked
		want Info
	}{
		{"nothing: go run, or no build info", nil, linked{},
			Info{Version: Unknown, GoVersion: runtime.Version()}},
		{"stamped by the go command in a checkout", stamped, linked{},
			Info{Version: "v0.0.0-20261204055814-b748d2d5a1b3+dirty", Revision: "b748d2d5a1b3c0ffee0000000000000000000000",
				Time: "2026-12-04T05:58:14Z", Modified: true, GoVersion: "go1.26.8"}},
		{"the image build's -X values, no checkout",
			&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}},
			linked{version: "v1.2.3", revision: "abc123", time: "2026-12-01T10:00:00Z", modified: "false"},
			Info{Version: "v1.2.3", Revision: "abc123", Time: "2026-12-01T10:00:00Z", GoVersion: "go1.26.8"}},
		{"-X wins over the stamp; a revision alone drops the stamped time and flag", stamped,
			linked{version: "v1.2.3", revision: "abc123"},
			Info{Version: "v1.2.3", Revision: "abc123", GoVersion: "go1.26.8"}},
		{"-X modified=true", stamped, linked{revision: "abc123", modified: "true"},
			Info{Version: "v0.0.0-20261204055814-b748d2d5a1b3+dirty", Revision: "abc123", Modified: true, GoVersion: "go1.26.8"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := from(tc.bi, tc.l); got != tc.want {
				t.Errorf("from() =\n %+v\nwant\n %+v", got, tc.want)
			}
		})
	}
}

func TestBuild(t *testing.T) {
	for _, tc := range []struct {
		in   Info
		want string
	}{
		{Info{Version: "v1.2.3", Revision: "abc123"}, "v1.2.3@abc123"},
		{Info{Version: "v1.2.3", Revision: "abc123", Modified: true}, "v1.2.3@abc123-dirty"},
		{Info{Version: Unknown}, Unknown},
	} {
		if got := tc.in.Build(); got != tc.want {
			t.Errorf("%+v.Build() = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestGet: a test binary has build info; Get reports its Go version.
func TestGet(t *testing.T) {
	i := Get()
	if i.GoVersion != runtime.Version() {
		t.Errorf("GoVersion = %q, want %q", i.GoVersion, runtime.Version())
	}
	if i.Version == "" {
		t.Error("Version is empty, want a version or " + Unknown)
	}
}
