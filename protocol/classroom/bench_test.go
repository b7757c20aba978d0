package classroom

import (
	"bytes"
	"fmt"
	"io"
	"testing"
)

// BenchmarkDecoder measures decoding a stream of typical pickup objects.
func BenchmarkDecoder(b *testing.B) {
	var stream bytes.Buffer
	const n = 1000
	for i := 0; i < n; i++ {
		stream.Write(Encode("pickup", fmt.Appendf(nil,
			`{"store":"1-206-flowers","orderID":"7c9e6679-7425-40de-944b-e07fc1f9%04d","customer":"Ada Lovelace","address":"%d Main St"}`, i, i)))
	}
	data := stream.Bytes()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	r := bytes.NewReader(data)
	d := NewDecoder(r, 0)
	for b.Loop() {
		r.Reset(data)
		*d = Decoder{r: r, max: DefaultMaxObject, buf: d.buf[:0], obj: d.obj[:0]}
		for {
			if _, err := d.Next(); err == io.EOF {
				break
			} else if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/object")
}
