package webhook

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"
)

// The example of the Standard Webhooks libraries' own tests.
func TestSignatureVector(t *testing.T) {
	key, err := secretKey("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	got := sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Errorf("signature %s, want %s", got, want)
	}
}

func TestSecrets(t *testing.T) {
	a, b := newSecret(), newSecret()
	if a == b || !strings.HasPrefix(a, "whsec_") {
		t.Fatalf("secrets %q %q", a, b)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(a, "whsec_"))
	if err != nil || len(raw) < 24 || len(raw) > 64 {
		t.Errorf("secret %q: %d bytes (%v); the specification wants 24 to 64", a, len(raw), err)
	}
}

func TestBackoff(t *testing.T) {
	s := &Service{cfg: Config{BackoffBase: time.Second, BackoffMax: 8 * time.Second}}
	for _, c := range []struct {
		attempt int
		nominal time.Duration
	}{{1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {4, 8 * time.Second}, {10, 8 * time.Second}, {1 << 20, 8 * time.Second}} {
		for range 50 {
			d := s.backoff(c.attempt)
			lo, hi := time.Duration(float64(c.nominal)*0.8), time.Duration(float64(c.nominal)*1.2)
			if d < lo || d > hi {
				t.Fatalf("backoff(%d) = %s, want within %s-%s", c.attempt, d, lo, hi)
			}
		}
	}
}
