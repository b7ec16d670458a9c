//go:build unix

package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// lock takes an exclusive advisory lock on the state directory so that two
// agents never enroll into it at once. It waits, polling, until ctx is done.
func (d *StateDir) lock(ctx context.Context) (unlock func(), err error) {
	f, err := os.OpenFile(d.File(lockFile), os.O_RDWR|os.O_CREATE, FileMode)
	if err != nil {
		return nil, fmt.Errorf("agent: lock state directory: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("agent: lock state directory: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("agent: state directory %s is locked by another agent: %w", d.path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
