package parcel

import "testing"

// A measurement of the order store keeps what was reserved for orders
// accepted while it read the engine: they may not be in what it read.
func TestMeasurementKeepsReservationsMadeMeanwhile(t *testing.T) {
	var s orderStore
	s.reserve(1000) // accepted before the measurement
	mark := s.reserved.Load()
	s.reserve(300) // accepted while the engine was read
	s.reserve(200)
	s.setMeasured(mark, 4000) // what the engine said, maybe without the last two
	if got := s.committed.Load(); got != 4500 {
		t.Fatalf("committed %d after a measurement of 4000 with 500 reserved meanwhile, want 4500", got)
	}
	s.reserve(100)
	if got := s.committed.Load(); got != 4600 {
		t.Fatalf("committed %d, want 4600", got)
	}
}
