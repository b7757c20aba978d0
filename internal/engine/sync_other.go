//go:build !linux

package engine

import (
	"errors"
	"os"
)

// groupSyncSupported: without syncfs(2) the embedded server keeps fsyncing
// every write itself (SyncAlways).
const groupSyncSupported = false

func syncFileSystem(*os.File) error { return errors.New("group sync needs Linux (syncfs)") }
