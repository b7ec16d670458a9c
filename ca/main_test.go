package ca_test

import (
	"os"
	"testing"

	"github.com/rootgate/rootgate/hsm"
	"github.com/rootgate/rootgate/internal/testenv"
)

// TestMain gives the whole test binary one SoftHSM token (SoftHSM reads
// SOFTHSM2_CONF once per process); tests keep apart by key label.
func TestMain(m *testing.M) { os.Exit(testenv.RunWithSoftHSM(m)) }

// openToken opens a new session on the process's SoftHSM token.
func openToken(t testing.TB) *hsm.Token {
	t.Helper()
	return testenv.SoftHSM(t).Open(t, "", hsm.Options{})
}
