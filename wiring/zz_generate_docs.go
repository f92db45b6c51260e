package wiring

// The AsyncAPI document is generated from the handlers through this package's
// Wire code, so it runs after wire_gen.go's directive: go generate runs a
// package's files in name order, hence the name. EVENTFN_PROFILE=local names
// the topics as a deployment without a topic prefix sees them.
//go:generate env EVENTFN_PROFILE=local go run .. asyncapi --out ../docs/asyncapi.json
