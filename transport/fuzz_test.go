package transport

import (
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzDecodeFrame: any client frame decodes without panicking to a known
// type or none, a bad-JSON error only for frames that are not JSON, and a
// seq only when it is an integer within ±2^53.
//
//	go test ./transport -run '^$' -fuzz '^FuzzDecodeFrame$' -fuzztime 30s
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range []string{
		`{"type":"toggle_step","trackId":"t1","step":3,"seq":12,"ack":40}`,
		`{"type":"play","seq":1.5}`, `{"type":"play","seq":9007199254740993}`, `{"type":"set_tempo","tempo":"x"}`,
		`{"TYPE":"stop","Seq":-0}`, `{"type":null}`, `[]`, `42`, `ping`, `{"type":`, "{\"type\":\"play\xff\"}", ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		typ, seq, err := decodeFrame(data)
		if err != nil {
			if err != errBadJSON || json.Valid(data) {
				t.Fatalf("decodeFrame(%q): %v (valid JSON: %v)", data, err, json.Valid(data))
			}
			return
		}
		if typ != "" && !mutatingTypes[typ] && !readOnlyTypes[typ] {
			t.Fatalf("decodeFrame(%q): unknown type %q", data, typ)
		}
		if seq != nil && (typ == "" || math.Abs(float64(*seq)) >= 1<<53) {
			t.Fatalf("decodeFrame(%q): seq %d with type %q", data, *seq, typ)
		}
	})
}

// FuzzHTTPHandlers sends any body, content type and session id to the six
// Keyboardia API routes over a backend that finds no session: the API
// answers every request with a client error or 404 in JSON, never a 5xx and
// never a panic.
//
//	go test ./transport -run '^$' -fuzz '^FuzzHTTPHandlers$' -fuzztime 30s
func FuzzHTTPHandlers(f *testing.F) {
	const id = "11111111-1111-4111-8111-111111111111"
	for i, body := range []string{`{}`, `{"state":{"tracks":[],"tempo":120}}`, `{"name":"x"}`, `not json`, `{"state":[]}`, `{"tracks":5}`} {
		f.Add(uint8(i), id, []byte(body), "application/json")
	}
	f.Add(uint8(1), "../../etc", []byte(``), "")
	f.Add(uint8(3), id, []byte(strings.Repeat("a", 70000)), "application/json")
	api := NewAPI(APIConfig{Backend: failing{err: ErrNotFound}})
	routes := []struct{ method, suffix string }{
		{http.MethodPost, ""}, {http.MethodGet, ""}, {http.MethodPut, ""}, {http.MethodPatch, ""},
		{http.MethodPost, "/remix"}, {http.MethodPost, "/publish"},
	}
	f.Fuzz(func(t *testing.T, route uint8, sid string, body []byte, contentType string) {
		rt := routes[int(route)%len(routes)]
		path := "/api/sessions"
		if route%uint8(len(routes)) != 0 {
			path += "/" + sid + rt.suffix
		}
		req, err := http.NewRequest(rt.method, "http://chorus.test"+path, strings.NewReader(string(body)))
		if err != nil {
			return // not a request a client could send
		}
		req.Header.Set("Content-Type", contentType)
		rec := httptest.NewRecorder()
		api.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%s %s (%q, %d bytes): %d %s", rt.method, path, contentType, len(body), rec.Code, rec.Body)
		}
		if strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") && !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s %s: %d with a body that is not JSON: %s", rt.method, path, rec.Code, rec.Body)
		}
	})
}
