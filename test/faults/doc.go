// Package faults is telemesh's fault suite. Its tests run the mesh the way
// production does, every stage as its own `telemesh serve <stage>` process
// beside a nats-server process and Postgres, drive a stream of messages with
// unique ids, inject one fault at a time (a stage killed with SIGKILL, NATS
// or Postgres restarted, a stage frozen, the publisher cut off from NATS,
// messages sent again after the NATS duplicate window) and then compare the
// ids NATS acknowledged with what reached Postgres and the analytics stream.
//
// `go test ./test/faults/` runs the short form (a few hundred messages per
// fault, short windows); `make test-faults` runs the long form
// (TELEMESH_FAULTS=long: more messages, production timeouts and the default
// two-minute duplicate window) and prints a table of the results.
package faults
