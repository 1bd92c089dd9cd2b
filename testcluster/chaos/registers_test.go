package chaos

import (
	"strings"
	"testing"

	"chorus/testcluster/check"
)

func TestRegistersFromSessionJSON(t *testing.T) {
	doc := `{"id":"x","name":"jam","state":{"tempo":97.25,"tracks":[` +
		`{"id":"t0","steps":[false,true],"parameterLocks":[null,{"volume":0.5,"pitch":-3}],"volume":0.25},` +
		`{"id":"c1"},{"id":"t1","steps":[],"parameterLocks":[],"volume":1}]}}`
	regs, err := registers([]byte(doc), []int{1, 2})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		tempoKey: "97.25", nameKey: "jam",
		check.StepKey("t0", 0): "false", check.StepKey("t0", 1): "true", check.StepKey("t0", 7): "false",
		check.LockKey("t0", 0): "null", check.LockKey("t0", 1): `{"pitch":-3,"volume":0.5}`, check.LockKey("t0", 3): "null",
		check.VolumeKey("t0"): "0.25", check.VolumeKey("t1"): "1", check.StepKey("t1", 2): "false",
		existsKey("c1"): "true", existsKey("c2"): "false",
	}
	for k, v := range want {
		if regs[k] != v {
			t.Errorf("%s = %q, want %q", k, regs[k], v)
		}
	}
	if _, ok := regs[check.VolumeKey("c1")]; ok {
		t.Error("a client track's volume became a register")
	}
	if n := len(regs); n != 2+2*(1+stepRegs+lockRegs)+2 {
		t.Errorf("%d registers: %v", n, regs)
	}

	null := `{"name":null,"state":{"tempo":120,"tracks":[]}}`
	if regs, err := registers([]byte(null), nil); err != nil || regs[nameKey] != "" {
		t.Errorf("null name: %q, %v", regs[nameKey], err)
	}
	for _, bad := range []string{`{`, `{"state":{"tracks":[{"id":"t0","parameterLocks":["x"]}]}}`} {
		if _, err := registers([]byte(bad), nil); err == nil {
			t.Errorf("registers(%s) did not fail", bad)
		}
	}
}

// TestInitialStateRegisters: the state a run creates its sessions with has
// every register the workload writes.
func TestInitialStateRegisters(t *testing.T) {
	regs, err := registers([]byte(`{"name":"chaos","state":`+initialState()+`}`), []int{0})
	if err != nil {
		t.Fatal(err)
	}
	for i := range stableTracks {
		id := stableTrackID(i)
		if regs[check.VolumeKey(id)] != "1" || regs[check.StepKey(id, stepRegs-1)] != "false" {
			t.Errorf("track %s: volume %q, last step %q", id, regs[check.VolumeKey(id)], regs[check.StepKey(id, stepRegs-1)])
		}
	}
	if regs[tempoKey] != "120" || regs[existsKey(clientTrackID(0))] != "false" {
		t.Errorf("tempo %q, own track %q", regs[tempoKey], regs[existsKey(clientTrackID(0))])
	}
}

func TestParseNemeses(t *testing.T) {
	for in, want := range map[string]string{
		"all": strings.Join(AllNemeses, ","), "none": "", "": "", "kill, pause,kill": "kill,pause",
	} {
		got, err := ParseNemeses(in)
		if err != nil || strings.Join(got, ",") != want {
			t.Errorf("ParseNemeses(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseNemeses("kill,flood"); err == nil || !strings.Contains(err.Error(), `"flood"`) {
		t.Errorf("unknown nemesis: %v", err)
	}
}
