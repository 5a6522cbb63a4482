package main

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/telemesh/telemesh/internal/demo"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/testutil"
)

// serveProc starts `telemesh serve <stage>` and waits until it serves; it
// returns the process and its gRPC and admin addresses.
func serveProc(t *testing.T, env []string, stage string, args ...string) (*proc, string, string) {
	t.Helper()
	p := startTelemesh(t, env, append([]string{"serve", stage, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--log-format", "json", "--shutdown-grace", "5s"}, args...)...)
	select {
	case rec := <-p.served:
		return p, rec["grpc"].(string), rec["admin"].(string)
	case err := <-p.done:
		t.Fatalf("%s exited before serving: %v\n%s", stage, err, p.output())
	case <-time.After(testWait):
		t.Fatalf("%s not serving after %s:\n%s", stage, testWait, p.output())
	}
	return nil, "", ""
}

var validateCalls = regexp.MustCompile(`grpc_server_handled_total\{grpc_code="OK",grpc_method="Validate",[^}]*\} (\d+)`)

// handledValidates reads how many Validate calls a validator answered OK.
func handledValidates(t *testing.T, admin string) int {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := validateCalls.FindSubmatch(b)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// TestValidatorsScaleOut runs every stage as its own process, three
// validators behind one target, and shows that the gateway's batches spread
// over all three and that killing one mid-stream loses no message.
func TestValidatorsScaleOut(t *testing.T) {
	db := testdb.New(t)
	ns := testnats.New(t)
	if err := demo.Seed(t.Context(), db.Pool); err != nil {
		t.Fatal(err)
	}
	env := []string{"TELEMESH_DATABASE_URL=" + db.URL, "TELEMESH_NATS_URL=" + ns.URL()}

	_, publisher, _ := serveProc(t, env, "publisher")
	_, persister, _ := serveProc(t, env, "persister", "--publisher-addr", publisher)
	_, deriver, _ := serveProc(t, env, "deriver", "--persister-addr", persister)
	var (
		validators []*proc
		addrs      []string
		admins     []string
	)
	for range 3 {
		p, addr, admin := serveProc(t, env, "validator", "--deriver-addr", deriver, "--persister-addr", persister)
		validators, addrs, admins = append(validators, p), append(addrs, addr), append(admins, admin)
	}
	serveProc(t, env, "gateway", "--validator-addr", strings.Join(addrs, ","), "--subjects", "devices.>,energy.>",
		"--batch-size", "50", "--batch-age", "2ms", "--max-deliver", "20", "--ack-wait", "10s", "--call-timeout", "5s")

	_, js := ns.Connect(t)
	ctx := t.Context()
	testutil.Eventually(t, testWait, "the gateway creates its stream", func() error {
		_, err := js.Stream(ctx, "TELEMETRY")
		return err
	})
	count := func(sql string) int {
		var n int
		if err := db.Pool.QueryRow(ctx, sql).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	const n = 3000
	published := make(chan struct{})
	go func() {
		defer close(published)
		for i := range n {
			body := fmt.Sprintf(`{"message_id": "scale-%d", "temp_c": %d, "humidity": 40}`, i, i%60)
			if _, err := js.PublishAsync("devices.thermo-01.telemetry", []byte(body)); err != nil {
				t.Errorf("publish: %v", err)
				return
			}
			if i%100 == 0 {
				time.Sleep(5 * time.Millisecond) // a steady stream, not one burst
			}
		}
		<-js.PublishAsyncComplete()
	}()

	// Kill one validator, without warning, once a third has gone through.
	testutil.Eventually(t, testWait, "a third of the stream stored", func() error {
		if got := count(`select count(*) from ingestion_messages where source_message_id like 'scale-%'`); got < n/3 {
			return fmt.Errorf("%d stored", got)
		}
		return nil
	})
	var before []int
	for i, admin := range admins {
		c := handledValidates(t, admin)
		if c <= 0 {
			t.Errorf("validator %d answered %d batches before the kill, want some: load is not spread", i, c)
		}
		before = append(before, c)
	}
	t.Logf("batches answered by each validator before the kill: %v", before)
	if err := validators[0].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-published

	testutil.Eventually(t, 2*testWait, "every message stored and processed after the kill", func() error {
		stored := count(`select count(*) from ingestion_messages where source_message_id like 'scale-%' and status = 'completed'`)
		processed := count(`select count(*) from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id
			where m.source_message_id like 'scale-%' and t.processing_state = 'processed'`)
		if stored != n || processed != n {
			return fmt.Errorf("%d of %d stored, %d processed", stored, n, processed)
		}
		return nil
	})
	if d := count(`select count(*) - count(distinct source_message_id) from ingestion_messages where source_message_id like 'scale-%'`); d != 0 {
		t.Errorf("%d duplicated messages", d)
	}
	if d := count(`select count(*) - count(distinct ingestion_message_id) from device_telemetry_logs`); d != 0 {
		t.Errorf("%d duplicated telemetry rows", d)
	}
	var spread []int
	for _, admin := range admins[1:] {
		spread = append(spread, handledValidates(t, admin))
	}
	t.Logf("batches answered by the surviving validators: %v", spread)
}
