package publisher_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"log/slog"
	"os"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"

	analyticsv1 "github.com/telemesh/telemesh/gen/telemesh/analytics/v1"
	"github.com/telemesh/telemesh/internal/catalog"
	"github.com/telemesh/telemesh/services/publisher"
)

// Example_readAnalytics reads the analytics stream the way a consumer in
// another team does: a JetStream consumer on the analytics subjects, each
// event decoded with protojson into the generated [analyticsv1.Event], and
// a device's latest values read from the device-states bucket into
// [analyticsv1.DeviceState]. The first half stands in for a running
// telemesh: an in-process NATS server and one event published by the
// publisher itself.
func Example_readAnalytics() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url, stop := startNATS()
	defer stop()
	publishOne(ctx, url)

	// A consumer: everything it needs is the NATS URL, the stream's name
	// and the generated types.
	nc, err := nats.Connect(url)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	cons, err := js.OrderedConsumer(ctx, "TELEMESH_ANALYTICS", jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"iot.v1.analytics.>"},
	})
	if err != nil {
		log.Fatal(err)
	}
	// DiscardUnknown: fields added to v1 later must not break this reader.
	decode := protojson.UnmarshalOptions{DiscardUnknown: true}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	for msg := range batch.Messages() {
		var ev analyticsv1.Event
		if err := decode.Unmarshal(msg.Data(), &ev); err != nil {
			log.Fatal(err)
		}
		fmt.Println(msg.Subject())
		fmt.Println(ev.GetOrganization(), ev.GetDeviceExternalId(), ev.GetTopic(), ev.GetRecordedAt().AsTime().Format(time.RFC3339))
		fmt.Println("co2 =", ev.GetValues().GetFields()["co2"].GetNumberValue())
		fmt.Println("aqi unresolved:", ev.GetUnresolved().GetFields()["aqi"].GetStructValue().GetFields()["reason"].GetStringValue())
	}

	kv, err := js.KeyValue(ctx, "device-states")
	if err != nil {
		log.Fatal(err)
	}
	entry, err := kv.Get(ctx, "6f1c2d3e-0000-4000-8000-000000000001")
	if err != nil {
		log.Fatal(err)
	}
	var state analyticsv1.DeviceState
	if err := decode.Unmarshal(entry.Value(), &state); err != nil {
		log.Fatal(err)
	}
	fmt.Println("latest air co2 =", state.GetTopics()["air"].GetValues().GetFields()["co2"].GetNumberValue())
	// Output:
	// iot.v1.analytics.dev.acme.6f1c2d3e-0000-4000-8000-000000000001.air
	// acme aq-01 air 2026-03-01T12:30:05Z
	// co2 = 612
	// aqi unresolved: missing input o3
	// latest air co2 = 612
}

// startNATS starts an in-process NATS server with JetStream in a temporary
// directory and returns its URL and how to stop it.
func startNATS() (string, func()) {
	dir, err := os.MkdirTemp("", "telemesh-example-")
	if err != nil {
		log.Fatal(err)
	}
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true})
	if err != nil {
		log.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		log.Fatal("nats-server not ready")
	}
	return srv.ClientURL(), func() {
		srv.Shutdown()
		srv.WaitForShutdown()
		_ = os.RemoveAll(dir)
	}
}

// publishOne publishes one event through the publisher, as telemesh does.
func publishOne(ctx context.Context, url string) {
	nc, err := nats.Connect(url)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	cfg := publisher.DefaultNATSConfig()
	kv, err := publisher.Setup(ctx, js, cfg)
	if err != nil {
		log.Fatal(err)
	}
	on := func() *catalog.Switches {
		return &catalog.Switches{Global: catalog.PipelineSwitch{PipelineEnabled: true, PublishAnalytics: true, PublishInvalidEvents: true}}
	}
	p := publisher.NewEmitter(js, kv, cfg, "dev", on, 10*time.Second, slog.New(slog.DiscardHandler))
	res := p.Publish(ctx, []publisher.Item{{
		MessageID: uuid.New(), OrganizationSlug: "acme", DeviceUUID: "6f1c2d3e-0000-4000-8000-000000000001",
		DeviceExternalID: "aq-01", Topic: "air", RecordedAt: time.Date(2026, 3, 1, 12, 30, 5, 0, time.UTC),
		Values:     json.RawMessage(`{"co2":612,"temp":21.5}`),
		Unresolved: json.RawMessage(`{"aqi":{"reason":"missing input o3"}}`),
	}}, false)
	if res[0].Err != nil {
		log.Fatal(res[0].Err)
	}
}
