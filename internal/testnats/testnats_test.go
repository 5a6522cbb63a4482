package testnats_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/testutil"
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
	// Generous: a busy machine makes every step slow, a healthy server
	// never waits this out.
	const wait = 2 * time.Minute
	ctx, cancel := context.WithTimeout(t.Context(), 2*wait)
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
		msg, err := cons.Next(jetstream.FetchMaxWait(wait))
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
		// The client reconnects, and JetStream answers once it has
		// recovered its store.
		var info *jetstream.StreamInfo
		testutil.Eventually(t, wait, "the stream answers after the restart", func() error {
			if !nc.IsConnected() {
				return fmt.Errorf("client is %s", nc.Status())
			}
			var err error
			info, err = stream.Info(ctx)
			return err
		})
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
