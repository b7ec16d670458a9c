package agent

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestBackoff(t *testing.T) {
	b := defaultBackoff
	var d time.Duration
	var got []time.Duration
	for range 8 {
		d = b.next(d)
		got = append(got, d)
	}
	want := []time.Duration{1, 2, 4, 8, 16, 30, 30, 30}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("schedule %v, want %v seconds", got, want)
		}
	}
	for _, d := range []time.Duration{time.Second, 4 * time.Second, 30 * time.Second} {
		seen := map[time.Duration]bool{}
		for range 200 {
			j := b.jitter(d)
			if j < d-d/10-50*time.Millisecond || j > d+d/10+50*time.Millisecond || j%(100*time.Millisecond) != 0 {
				t.Fatalf("jitter(%s) = %s", d, j)
			}
			seen[j] = true
		}
		if len(seen) < 2 {
			t.Errorf("jitter(%s) never varies", d)
		}
	}
}

func TestRetryable(t *testing.T) {
	refused := `connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused"`
	unknownCA := `connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"`
	wrongName := `connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate is valid for localhost, not example.org"`
	cases := []struct {
		code  codes.Code
		msg   string
		retry bool
		hint  string
	}{
		{codes.Unavailable, refused, true, ""},
		{codes.Unavailable, `connection error: desc = "error reading server preface: EOF"`, true, ""},
		{codes.Unavailable, "CA signing key unavailable; retry later", true, ""},
		{codes.Unavailable, unknownCA, false, "check --ca-bundle: the server's certificate is not signed by it"},
		{codes.Unavailable, wrongName, false, "check --server-name: the server's certificate is not issued for that name"},
		{codes.PermissionDenied, "token used", false, ""},
		{codes.InvalidArgument, "bad EK", false, ""},
		{codes.FailedPrecondition, "challenge expired", false, ""},
		{codes.DeadlineExceeded, "deadline", false, ""},
	}
	for _, c := range cases {
		err := status.Error(c.code, c.msg)
		if got := retryable(err); got != c.retry {
			t.Errorf("retryable(%v: %s) = %v", c.code, c.msg, got)
		}
		se := serverError("BeginEnrollment", "h:1", err)
		if se.Hint != c.hint {
			t.Errorf("hint for %v: %s = %q, want %q", c.code, c.msg, se.Hint, c.hint)
		}
		var back *ServerError
		if !errors.As(error(se), &back) || status.Code(se) != c.code {
			t.Errorf("ServerError round trip for %v", c.code)
		}
	}
	if got := shortCause(refused); got != "connection refused" {
		t.Errorf("shortCause = %q", got)
	}
}
