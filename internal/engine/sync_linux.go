package engine

import (
	"os"

	"golang.org/x/sys/unix"
)

// groupSyncSupported: Linux has syncfs(2), which flushes one file system.
const groupSyncSupported = true

// syncFileSystem writes everything cached for the file system holding f to
// its disk and waits for it (syncfs(2); since Linux 5.8 it also reports
// write-back errors).
func syncFileSystem(f *os.File) error { return unix.Syncfs(int(f.Fd())) }
