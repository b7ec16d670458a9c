package hsm_test

import (
	"os"
	"testing"

	"github.com/rootgate/rootgate/internal/testenv"
)

// TestMain makes one SoftHSM token for the test process: SoftHSM's
// configuration is read once per process, at C_Initialize.
func TestMain(m *testing.M) { os.Exit(testenv.RunWithSoftHSM(m)) }
