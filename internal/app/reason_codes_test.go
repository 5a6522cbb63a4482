package app

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	gatewayv1 "github.com/telemesh/telemesh/gen/telemesh/gateway/v1"
)

// codesOf returns how many stage-log rows each stage:status:code has, the
// rows without a code as stage:status:(none).
func (f *fixture) codesOf() map[string]int {
	f.t.Helper()
	rows, err := f.db.Pool.Query(f.t.Context(), `select stage || ':' || status || ':' || coalesce(reason_code, '(none)'), count(*)
		from ingestion_stage_logs where status <> 'completed' group by 1`)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var (
			k string
			n int
		)
		if err := rows.Scan(&k, &n); err != nil {
			f.t.Fatal(err)
		}
		out[k] = n
	}
	if err := rows.Err(); err != nil {
		f.t.Fatal(err)
	}
	return out
}

// checkCodes fails unless every stage-log row that is not completed has a
// reason code, and each of want is there.
func (f *fixture) checkCodes(want ...string) {
	f.t.Helper()
	got := f.codesOf()
	f.t.Logf("stage-log rows by code: %v", got)
	for k, n := range got {
		if strings.HasSuffix(k, ":(none)") {
			f.t.Errorf("%d %s rows without a reason code", n, strings.TrimSuffix(k, ":(none)"))
		}
	}
	for _, k := range want {
		if got[k] == 0 {
			f.t.Errorf("no %s row", k)
		}
	}
}

// Every stage sets a reason code on each row it writes that is not
// completed, where it decides the outcome.
func TestEveryFailureRowHasAReasonCode(t *testing.T) {
	t.Run("ingress, validate, derive", func(t *testing.T) {
		f := newFixture(t, nil)
		f.setSwitch(&f.globex, false)
		for _, m := range []struct{ subject, payload, id string }{
			{"devices.meter-01.telemetry", `{"temp_c": 1`, "cut"},
			{"devices.meter-01.telemetry", `[1, 2]`, "array"},
			{"devices.ghost-01.telemetry", `{"temp_c": 1}`, "ghost"},
			{"devices.meter-01.nosuchtopic", `{"temp_c": 1}`, "topic"},
			{"devices.meter-02.telemetry", `{"temp_c": 1}`, "inactive"},
			{"devices.meter-01.telemetry", `{"temp_c": 500}`, "max"},
			{"devices.meter-01.telemetry", `{"humidity": 50}`, "required"},
			{"devices.meter-01.telemetry", `{"temp_c": 20}`, "no-humidity"},
		} {
			f.publish(m.subject, m.payload, m.id)
		}
		f.waitMessages(8, "source_message_id in ('cut', 'array', 'ghost', 'topic', 'inactive', 'max', 'required', 'no-humidity')")
		// globex is switched off: its message is parked, once the gateway
		// has the switch (within a second); publish until one is.
		deadline := time.Now().Add(20 * time.Second)
		for i := 0; f.count(`select count(*) from ingestion_messages where status = 'parked'`) == 0; i++ {
			if time.Now().After(deadline) {
				t.Fatal("no globex message parked within 20s")
			}
			f.publish("devices.globex-01.telemetry", `{"temp_c": 1}`, fmt.Sprintf("parked-%d", i))
			time.Sleep(200 * time.Millisecond)
		}
		// The same message sent again by its device, with its id: a
		// duplicate of the one that reached persist.
		gconn, err := grpc.NewClient(f.mesh.GRPC[Gateway], grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer gconn.Close()
		for range 2 {
			if _, err := gatewayv1.NewGatewayServiceClient(gconn).Ingest(t.Context(), &gatewayv1.IngestRequest{
				Subject: "devices.meter-01.telemetry", Payload: []byte(`{"temp_c": 10, "humidity": 40}`), MessageId: "twice",
			}); err != nil {
				t.Fatal(err)
			}
		}
		f.waitIdle()
		f.checkCodes("validate:duplicate:duplicate", "ingress:halted:invalid_json", "ingress:halted:not_an_object", "ingress:halted:unknown_device",
			"ingress:halted:unknown_topic", "ingress:parked:parked", "validate:halted:inactive", "validate:halted:max",
			"validate:halted:required", "derive:unresolved:missing_input")
	})

	t.Run("dead letter", func(t *testing.T) {
		f := newFixture(t, func(o *Options) {
			if o.Stage == Gateway {
				o.Hops[Validator] = "127.0.0.1:1"
				o.Gateway.MaxDeliver = 2
				o.Gateway.Backoff = []time.Duration{50 * time.Millisecond}
				o.Gateway.CallTimeout = 300 * time.Millisecond
				o.Gateway.AckWait = 2 * time.Second
			}
		})
		f.publish("devices.meter-01.telemetry", `{"temp_c": 1}`, "dead")
		f.waitMessages(1, "source_message_id = 'dead' and status = 'failed_terminal'")
		f.checkCodes("ingress:failed:dead_lettered")
	})

	t.Run("publisher unreachable", func(t *testing.T) {
		f := newFixture(t, func(o *Options) {
			if o.Stage == Persister {
				o.Hops[Publisher] = "127.0.0.1:1"
				o.Persister.PublishTimeout = 300 * time.Millisecond
			}
		})
		f.publish("devices.meter-01.telemetry", `{"temp_c": 1}`, "nopub")
		f.waitMessages(1, "source_message_id = 'nopub' and status = 'completed'")
		f.waitIdle()
		f.checkCodes("publish:failed:publisher_unreachable")
	})
}
