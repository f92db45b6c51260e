// Package handlers holds eventfn's business handlers: one file per handler, each
// an exported function that returns runtime.Handler. The event types they
// consume and emit, and the ports (interfaces) they need, live beside them.
//
// After adding or removing a handler, run `go generate ./...`: it rewrites
// registry_gen.go here and Wire's wiring/wire_gen.go. This package imports
// eventfn's runtime package only.
package handlers

//go:generate go run ../cmd/eventfn-gen -dir .
