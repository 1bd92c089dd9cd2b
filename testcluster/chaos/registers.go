package chaos

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"chorus/testcluster/check"
)

// The workload's register space. Each session has stableTracks tracks that
// are never deleted (their steps, parameter locks and volume are registers),
// one track per client that the client adds and deletes (its existence is a
// register), the tempo and the name. The checkers see every register on its
// own (check.Op's model), so the space is kept small enough that each
// register gets many operations.
const (
	stableTracks = 2 // tracks t0, t1
	stepRegs     = 8 // steps 0..7 of each stable track
	lockRegs     = 4 // parameter locks on steps 0..3
)

func stableTrackID(i int) string { return "t" + strconv.Itoa(i) }
func clientTrackID(c int) string { return "c" + strconv.Itoa(c) }

func existsKey(track string) string { return "track:" + track + ":exists" }

const (
	tempoKey = "tempo"
	nameKey  = "name"
)

// trackJSON renders a new track with the given id, in the shape the API
// accepts.
func trackJSON(id string) string {
	return `{"id":"` + id + `","name":"Chaos ` + id + `","sampleId":"kick","steps":[],"parameterLocks":[],` +
		`"volume":1,"muted":false,"soloed":false,"playbackMode":"oneshot","transpose":0,"stepCount":16}`
}

// initialState is the state every session of a run starts with.
func initialState() string {
	tracks := make([]string, stableTracks)
	for i := range tracks {
		tracks[i] = trackJSON(stableTrackID(i))
	}
	return `{"tracks":[` + strings.Join(tracks, ",") + `],"tempo":120,"swing":0,"version":1}`
}

// sessionDoc is the part of a session's JSON (GET /api/sessions/{id}, or
// fsm's rendering of a session) that the registers come from.
type sessionDoc struct {
	Name  *string `json:"name"`
	State struct {
		Tempo  float64 `json:"tempo"`
		Tracks []struct {
			ID             string            `json:"id"`
			Steps          []bool            `json:"steps"`
			ParameterLocks []json.RawMessage `json:"parameterLocks"`
			Volume         *float64          `json:"volume"`
		} `json:"tracks"`
	} `json:"state"`
}

// registers derives every register of the workload from a session's JSON.
// clients are the ids of the clients that use this session (their tracks'
// existence is a register). Reads, the initial values and the final states
// all go through here, so they agree on the rendering.
func registers(sessionJSON []byte, clients []int) (map[string]string, error) {
	var doc sessionDoc
	if err := json.Unmarshal(sessionJSON, &doc); err != nil {
		return nil, fmt.Errorf("session JSON: %w", err)
	}
	regs := map[string]string{tempoKey: check.FormatNum(doc.State.Tempo), nameKey: ""}
	if doc.Name != nil {
		regs[nameKey] = *doc.Name
	}
	present := map[string]bool{}
	for _, t := range doc.State.Tracks {
		present[t.ID] = true
		if !isStableTrack(t.ID) {
			continue
		}
		for s := range stepRegs {
			regs[check.StepKey(t.ID, s)] = strconv.FormatBool(s < len(t.Steps) && t.Steps[s])
		}
		for s := range lockRegs {
			var raw json.RawMessage
			if s < len(t.ParameterLocks) {
				raw = t.ParameterLocks[s]
			}
			v, err := check.LockValue(raw)
			if err != nil {
				return nil, fmt.Errorf("track %s: %w", t.ID, err)
			}
			regs[check.LockKey(t.ID, s)] = v
		}
		if t.Volume != nil {
			regs[check.VolumeKey(t.ID)] = check.FormatNum(*t.Volume)
		}
	}
	for _, c := range clients {
		regs[existsKey(clientTrackID(c))] = strconv.FormatBool(present[clientTrackID(c)])
	}
	return regs, nil
}

func isStableTrack(id string) bool {
	for i := range stableTracks {
		if id == stableTrackID(i) {
			return true
		}
	}
	return false
}
