// Package faults is telemesh's fault suite. Its tests run the mesh the way
// production does, every stage as its own `telemesh serve <stage>` process
// beside nats-server processes and Postgres, drive a stream of messages
// with unique ids, inject one fault at a time and then compare the ids NATS
// acknowledged with what reached Postgres and the analytics stream.
//
// The faults: a stage killed with SIGKILL, every stage restarted in turn
// with SIGTERM as a deploy rolls them, NATS or Postgres restarted, a
// stage frozen, the publisher cut off from NATS, messages sent again after
// the NATS duplicate window; on a three-node JetStream cluster (streams and
// bucket at three replicas, every stage given all three URLs) the stream's
// leader or the bucket's leader killed, a rolling restart of the servers,
// and a server whose store is wiped rejoining; on a Postgres primary with a
// synchronous standby (one multi-host URL, target_session_attrs=read-write)
// the primary killed and the standby promoted.
//
// Every fault's line in the table gives, besides the set check, how
// quickly the pipeline came back, from the fault's moment (a restart, a
// kill the cluster is to survive, a promotion): moving again (the first
// message processed after it), time to last processed (of the messages
// published before it: the backlog it held up), and the longest
// wait of any message from its publish to its processed row, each with
// PASS or FAIL against its target (5 s, 10 s, 10 s).
//
// `go test ./test/faults/` runs the short form (a few hundred messages per
// fault, short windows and timeouts; the targets are reported); `make
// test-faults` runs the long form (TELEMESH_FAULTS=long: more messages,
// production timeouts and the default two-minute duplicate window), where
// a missed target fails the fault (TELEMESH_FAULTS_TARGETS=report or
// enforce overrides either form).
//
// `make soak` runs TestSoak: a paced stream for SOAK_DURATION at SOAK_RATE
// on the cluster and the Postgres pair, with a nemesis that picks a random
// fault every 20 to 60 seconds from a printed seed (SOAK_SEED replays it),
// then the set check and a latency histogram.
package faults
