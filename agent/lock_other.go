//go:build !unix

package agent

import "context"

// lock is a no-op where flock is not available.
func (d *StateDir) lock(context.Context) (func(), error) { return func() {}, nil }
