package main

import "testing"

func TestGCDefaultsYieldToTheEnvironment(t *testing.T) {
	p, setP, l, setL := gcDefaults(map[string]string{})
	if !setP || !setL || p != defaultGCPercent || l != defaultMemoryLimit {
		t.Errorf("no GOGC/GOMEMLIMIT: got %d %v %d %v, want both defaults applied", p, setP, l, setL)
	}
	if _, setP, _, setL = gcDefaults(map[string]string{"GOGC": "100"}); setP || !setL {
		t.Errorf("GOGC set: setPercent %v setLimit %v, want false true", setP, setL)
	}
	if _, setP, _, setL = gcDefaults(map[string]string{"GOMEMLIMIT": "1GiB"}); !setP || setL {
		t.Errorf("GOMEMLIMIT set: setPercent %v setLimit %v, want true false", setP, setL)
	}
}
