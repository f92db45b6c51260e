//go:build unix

package main

import "syscall"

// restrictFileModes makes every file and directory the process creates
// private to its owner. The embedded broker writes its log files 0644 and
// offers no option; they hold customer data.
func restrictFileModes() { syscall.Umask(0o077) }
