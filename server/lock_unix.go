//go:build unix

package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// LockFile is the lock a running server holds in its data directory.
const LockFile = "server.lock"

// ErrLocked reports that another server holds the data directory's lock.
var ErrLocked = errors.New("server: data directory in use")

// lockDataDir takes an exclusive, non-blocking flock on
// <dataDir>/server.lock. The kernel releases it when the returned file is
// closed or the process exits, so a crashed server leaves no stale lock.
func lockDataDir(dataDir string) (*os.File, error) {
	path := filepath.Join(dataDir, LockFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock the data directory: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another rootgate server is running on %s (it holds %s): %w", dataDir, path, ErrLocked)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}
