package transport

import "testing"

// BenchmarkDecodeFrame is the read loop's decoding of one client frame into
// its type and seq (decodeFrame); the node then decodes the fields of the
// type (node's BenchmarkWireDecode).
//
//	go test ./transport -run '^$' -bench DecodeFrame -benchmem
func BenchmarkDecodeFrame(b *testing.B) {
	for _, bm := range []struct{ name, frame string }{
		{"toggle_step", `{"type":"toggle_step","trackId":"t1","step":3,"seq":12,"ack":40}`},
		{"set_parameter_lock", `{"type":"set_parameter_lock","trackId":"track-1","step":5,"lock":{"pitch":7,"volume":0.8},"seq":13,"ack":41}`},
		{"cursor_move", `{"type":"cursor_move","position":{"x":0.42,"y":0.17,"trackId":"track-1","step":5}}`},
	} {
		b.Run(bm.name, func(b *testing.B) {
			data := []byte(bm.frame)
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				typ, _, err := decodeFrame(data)
				if err != nil || typ == "" {
					b.Fatalf("decodeFrame(%s) = %q, %v", data, typ, err)
				}
			}
		})
	}
}
