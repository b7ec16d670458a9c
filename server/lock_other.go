//go:build !unix

package server

import (
	"errors"
	"os"
)

// LockFile is the lock a running server holds in its data directory.
const LockFile = "server.lock"

// ErrLocked reports that another server holds the data directory's lock.
var ErrLocked = errors.New("server: data directory in use")

// lockDataDir is a no-op where flock is not available.
func lockDataDir(string) (*os.File, error) { return nil, nil }
