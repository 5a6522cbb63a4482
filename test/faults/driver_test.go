package faults_test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// device is a seeded demo device and a valid payload for it, so every
// message the driver sends should end processed with one analytics event.
type device struct {
	subject string
	body    func(id string, i int) string
}

var devices = []device{
	{"devices.thermo-01.telemetry", func(id string, i int) string {
		return fmt.Sprintf(`{"message_id":%q,"temp_c":%d,"humidity":%d,"mode":"heat"}`, id, 10+i%30, 30+i%50)
	}},
	{"devices.thermo-02.telemetry", func(id string, i int) string {
		return fmt.Sprintf(`{"message_id":%q,"temp_c":%d,"humidity":%d}`, id, 5+i%40, 20+i%60)
	}},
	{"devices.aq-01.telemetry", func(id string, i int) string {
		return fmt.Sprintf(`{"message_id":%q,"pm25":%d,"co2":%d,"meta":{"firmware":"v1.2"}}`, id, i%80, 400+i%900)
	}},
	{"energy.main-energy-meter-01.telemetry", func(id string, i int) string {
		return fmt.Sprintf(`{"message_id":%q,"power_w":%d,"voltage_v":230,"current_a":%d}`, id, 100+i%2000, 1+i%10)
	}},
}

// message is one message of the stream.
type message struct {
	id, subject string
	body        []byte
}

// driver publishes a stream of messages with unique ids, each carried both
// as the Nats-Msg-Id header and as the payload's message_id, as devices
// do. A publish that gets no acknowledgement (NATS restarting, a timeout)
// is sent again with the same id until NATS acknowledges it, so every
// message the driver sends ends up published exactly as a careful device
// would: the set of acknowledged ids is what telemesh must store.
type driver struct {
	js     jetstream.JetStream
	stream string
	prefix string

	mu sync.Mutex
	// acked holds, per acknowledged id, when its first acknowledgement came.
	acked map[string]time.Time
	// resentStored and resentCaught are the ids sent again after the
	// duplicate window that the stream stored anew, and those it still
	// recognised as duplicates.
	resentStored, resentCaught []string
	// retries counts publishes sent again after no acknowledgement.
	retries atomic.Int64
}

func newDriver(js jetstream.JetStream, prefix string) *driver {
	return &driver{js: js, stream: "TELEMETRY", prefix: prefix, acked: map[string]time.Time{}}
}

// run publishes n messages at about rate per second, spread over the
// devices, one sender per device, and returns once all are acknowledged or
// ctx ends. With resendAfter > 0 every tenth message is sent again, with
// the same id and payload, resendAfter after its acknowledgement.
func (d *driver) run(ctx context.Context, n, rate int, resendAfter time.Duration) error {
	var (
		wg     sync.WaitGroup
		errs   = make(chan error, len(devices)+1)
		resend chan message
	)
	if resendAfter > 0 {
		resend = make(chan message, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.resend(ctx, resend, resendAfter); err != nil {
				errs <- err
			}
		}()
	}
	var senders sync.WaitGroup
	interval := time.Duration(len(devices)) * time.Second / time.Duration(rate)
	for k, dev := range devices {
		senders.Add(1)
		go func() {
			defer senders.Done()
			next := time.Now()
			for i := k; i < n; i += len(devices) {
				id := fmt.Sprintf("%s-%06d", d.prefix, i)
				m := message{id: id, subject: dev.subject, body: []byte(dev.body(id, i))}
				if _, err := d.publish(ctx, m); err != nil {
					errs <- fmt.Errorf("%s: %w", id, err)
					return
				}
				if resend != nil && i%10 == 0 {
					resend <- m
				}
				next = next.Add(interval)
				if wait := time.Until(next); wait > 0 {
					select {
					case <-ctx.Done():
						errs <- ctx.Err()
						return
					case <-time.After(wait):
					}
				}
			}
		}()
	}
	senders.Wait()
	if resend != nil {
		close(resend)
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// publish sends m until NATS acknowledges it and records the first
// acknowledgement.
func (d *driver) publish(ctx context.Context, m message) (*jetstream.PubAck, error) {
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		ack, err := d.js.Publish(pctx, m.subject, m.body, jetstream.WithMsgID(m.id), jetstream.WithExpectStream(d.stream))
		cancel()
		if err == nil {
			d.mu.Lock()
			if _, ok := d.acked[m.id]; !ok {
				d.acked[m.id] = time.Now()
			}
			d.mu.Unlock()
			return ack, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("not acknowledged: %w (last error: %v)", ctx.Err(), err)
		}
		d.retries.Add(1)
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// resend sends each message again once after has passed since its
// acknowledgement, and records whether the stream stored it anew.
func (d *driver) resend(ctx context.Context, msgs <-chan message, after time.Duration) error {
	for m := range msgs {
		d.mu.Lock()
		at := d.acked[m.id]
		d.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Until(at.Add(after))):
		}
		retriesBefore := d.retries.Load()
		ack, err := d.publish(ctx, m)
		if err != nil {
			return fmt.Errorf("resend %s: %w", m.id, err)
		}
		d.mu.Lock()
		switch {
		case !ack.Duplicate:
			d.resentStored = append(d.resentStored, m.id)
		case d.retries.Load() == retriesBefore:
			// Only a resend that was not itself retried says the stream
			// still knew the id.
			d.resentCaught = append(d.resentCaught, m.id)
		}
		d.mu.Unlock()
	}
	return nil
}

// published returns the acknowledged ids, sorted.
func (d *driver) published() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	ids := make([]string, 0, len(d.acked))
	for id := range d.acked {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// ackedTimes returns when NATS first acknowledged each id.
func (d *driver) ackedTimes() map[string]time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]time.Time, len(d.acked))
	for id, at := range d.acked {
		out[id] = at
	}
	return out
}

// count returns how many ids have been acknowledged.
func (d *driver) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.acked)
}
