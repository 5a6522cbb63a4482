package testnats_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/testnats"
)

func TestPublishAndReadBack(t *testing.T) {
	t.Parallel()
	srv := testnats.New(t)
	if !srv.Server.JetStreamEnabled() {
		t.Fatal("JetStream is not enabled")
	}
	nc, err := nats.Connect(srv.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "TELEMETRY", Subjects: []string{"devices.>"}, Storage: jetstream.FileStorage,
	})
	if err != nil {
		t.Fatal(err)
	}
	publish := func(data string) {
		t.Helper()
		if _, err := js.Publish(ctx, "devices.meter-01.telemetry", []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	publish(`{"temp_c": 10}`)

	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "reader", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	next := func(want string) {
		t.Helper()
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if string(msg.Data()) != want || msg.Subject() != "devices.meter-01.telemetry" {
			t.Fatalf("read %s %q, want %q", msg.Subject(), msg.Data(), want)
		}
		if err := msg.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	next(`{"temp_c": 10}`)

	t.Run("restart keeps the address and the stream", func(t *testing.T) {
		url := srv.URL()
		publish(`{"temp_c": 11}`)
		srv.Restart(t)
		if srv.URL() != url {
			t.Fatalf("URL changed from %s to %s", url, srv.URL())
		}
		deadline := time.Now().Add(10 * time.Second)
		for !nc.IsConnected() {
			if time.Now().After(deadline) {
				t.Fatal("client did not reconnect")
			}
			time.Sleep(20 * time.Millisecond)
		}
		info, err := stream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != 2 {
			t.Fatalf("stream holds %d messages after restart, want 2", info.State.Msgs)
		}
		next(`{"temp_c": 11}`)
	})
}

func TestServersAreIndependent(t *testing.T) {
	t.Parallel()
	a, b := testnats.New(t), testnats.New(t)
	if a.URL() == b.URL() {
		t.Fatalf("two servers share %s", a.URL())
	}
}
