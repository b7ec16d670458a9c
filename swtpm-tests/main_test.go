// Package swtpmtests holds Rootgate's end-to-end tests: the real rootgate
// binary (server, agent, admin commands) against real swtpm devices whose
// EK certificates come from a private EK CA, a real SoftHSM token, a real
// SQLite store, gRPC and TLS over loopback. Nothing is mocked.
package swtpmtests

import (
	"os"
	"testing"

	"github.com/rootgate/rootgate/internal/testenv"
)

// rootgateBin is the binary built once for the package by TestMain.
var rootgateBin string

func TestMain(m *testing.M) { os.Exit(testenv.RunWithRootgate(m, &rootgateBin)) }
