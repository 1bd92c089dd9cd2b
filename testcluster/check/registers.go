package check

import (
	"encoding/json"
	"fmt"
	"strconv"
)

// StepKey, LockKey and VolumeKey name a track's registers (Op.Key) in the
// workloads that record histories: chorus chaos's and the graceful
// operations tests'. Sharing the names and the renderings below keeps what
// one workload sends, reads and checks comparable with the other's.
func StepKey(track string, step int) string { return "track:" + track + ":step:" + strconv.Itoa(step) }

// LockKey names the register of a track's parameter lock on step.
func LockKey(track string, step int) string { return "track:" + track + ":plock:" + strconv.Itoa(step) }

// VolumeKey names the register of a track's volume.
func VolumeKey(track string) string { return "track:" + track + ":volume" }

// FormatNum renders a number the way registers hold it, so that a value
// sent, a value acknowledged and a value read compare equal.
func FormatNum(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// LockValue renders a parameter lock (null, absent or an object of numbers)
// canonically: "null", or the object with sorted keys (the server keeps the
// order they arrived in).
func LockValue(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "null", nil
	}
	var m map[string]float64
	if err := json.Unmarshal(raw, &m); err != nil {
		return "", fmt.Errorf("parameter lock %s: %w", raw, err)
	}
	b, err := json.Marshal(m) // map keys marshal sorted
	if err != nil {
		return "", fmt.Errorf("parameter lock %s: %w", raw, err)
	}
	return string(b), nil
}
