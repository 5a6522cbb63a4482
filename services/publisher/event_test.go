package publisher

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	analyticsv1 "github.com/telemesh/telemesh/gen/telemesh/analytics/v1"
	"github.com/telemesh/telemesh/internal/envelope"
)

// sameJSON fails the test unless got and want are the same JSON value:
// the same fields, present or absent, with the same values and strings.
func sameJSON(t *testing.T, got, want []byte) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, got)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("protojson wrote no JSON: %v\n%s", err, want)
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("hand-written JSON differs from protojson's:\n got  %s\n want %s", got, want)
	}
}

// toStruct parses a JSON object as protojson would.
func toStruct(t testing.TB, raw json.RawMessage) *structpb.Struct {
	t.Helper()
	if raw == nil {
		return nil
	}
	s := &structpb.Struct{}
	if err := protojson.Unmarshal(raw, s); err != nil {
		t.Fatal(err)
	}
	return s
}

// eventMessage is the message an item's event stands for.
func eventMessage(t testing.TB, it *Item) proto.Message {
	if it.Invalid {
		ev := &analyticsv1.InvalidEvent{
			MessageId: it.MessageID.String(), Organization: it.OrganizationSlug, DeviceUuid: it.DeviceUUID,
			DeviceExternalId: it.DeviceExternalID, Topic: it.Topic, RecordedAt: timestamppb.New(it.RecordedAt),
		}
		for _, e := range it.ValidationErrors {
			ev.Errors = append(ev.Errors, &analyticsv1.ValidationError{
				Parameter: e.Parameter, Code: proto.String(e.Code), Message: proto.String(e.Message), Critical: proto.Bool(e.Critical),
			})
		}
		return ev
	}
	return &analyticsv1.Event{
		MessageId: it.MessageID.String(), Organization: it.OrganizationSlug, DeviceUuid: it.DeviceUUID,
		DeviceExternalId: it.DeviceExternalID, Topic: it.Topic, RecordedAt: timestamppb.New(it.RecordedAt),
		Values: toStruct(t, it.Values), Unresolved: toStruct(t, it.Unresolved),
	}
}

func TestEncodingMatchesProtojson(t *testing.T) {
	id := uuid.MustParse("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
	at := time.Date(2026, 3, 1, 12, 30, 5, 0, time.UTC)
	berlin := time.FixedZone("CET", 3600)
	base := Item{
		MessageID: id, OrganizationSlug: "acme", DeviceUUID: "6f1c2d3e-0000-4000-8000-000000000001",
		DeviceExternalID: "aq-01", Topic: "air", RecordedAt: at,
		Values: json.RawMessage(`{"co2":612,"temp":21.5,"ok":true,"name":"hall \"A\"","tags":["a","b"],"nested":{"x":null}}`),
	}
	with := func(f func(*Item)) Item { it := base; f(&it); return it }
	items := map[string]Item{
		"values":            base,
		"unresolved":        with(func(it *Item) { it.Unresolved = json.RawMessage(`{"dew":{"reason":"missing input humidity"}}`) }),
		"no external id":    with(func(it *Item) { it.DeviceExternalID = "" }),
		"no values":         with(func(it *Item) { it.Values = nil }),
		"milliseconds":      with(func(it *Item) { it.RecordedAt = at.Add(120 * time.Millisecond) }),
		"microseconds":      with(func(it *Item) { it.RecordedAt = at.Add(123450 * time.Microsecond) }),
		"nanoseconds":       with(func(it *Item) { it.RecordedAt = at.Add(7) }),
		"another zone":      with(func(it *Item) { it.RecordedAt = at.In(berlin) }),
		"strings to escape": with(func(it *Item) { it.Topic, it.DeviceExternalID = "a\"b\\c\nd\x01", "gerät-ü€" }),
		"invalid": with(func(it *Item) {
			it.Invalid = true
			it.ValidationErrors = []envelope.ValidationError{{Parameter: "co2", Code: "out_of_range", Message: "co2 is 9000, above 5000", Critical: true}, {Code: "missing", Message: ""}}
		}),
		"invalid without errors": with(func(it *Item) { it.Invalid = true }),
		"invalid ignores values": with(func(it *Item) { it.Invalid = true; it.Unresolved = json.RawMessage(`{"a":1}`) }),
	}
	for name, it := range items {
		t.Run(name, func(t *testing.T) {
			got := appendEvent(nil, &it)
			msg := eventMessage(t, &it)
			want, err := protojson.Marshal(msg)
			if err != nil {
				t.Fatal(err)
			}
			sameJSON(t, got, want)
			// A consumer's strict decoder takes it, and reads back what was sent.
			back := msg.ProtoReflect().New().Interface()
			if err := protojson.Unmarshal(got, back); err != nil {
				t.Fatalf("protojson refuses the event: %v\n%s", err, got)
			}
			if !proto.Equal(back, msg) {
				t.Fatalf("decoded %v, want %v", back, msg)
			}
		})
	}
}

func TestDeviceStateMatchesProtojson(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 30, 5, 250_000_000, time.UTC)
	s := DeviceState{
		DeviceUUID: "6f1c2d3e-0000-4000-8000-000000000001", Organization: "acme", UpdatedAt: at.Add(time.Second),
		Topics: map[string]TopicState{
			"water": {Values: json.RawMessage(`{"ph":7.1}`), MessageID: "b", RecordedAt: at},
			"air":   {Values: json.RawMessage(`{"co2":612}`), MessageID: "a", RecordedAt: at.Add(1500 * time.Microsecond)},
			"empty": {MessageID: "c", RecordedAt: at},
		},
	}
	msg := &analyticsv1.DeviceState{DeviceUuid: s.DeviceUUID, Organization: s.Organization, UpdatedAt: timestamppb.New(s.UpdatedAt),
		Topics: map[string]*analyticsv1.TopicState{}}
	for k, ts := range s.Topics {
		msg.Topics[k] = &analyticsv1.TopicState{Values: toStruct(t, ts.Values), MessageId: ts.MessageID, RecordedAt: timestamppb.New(ts.RecordedAt)}
	}
	got, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	want, err := protojson.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	sameJSON(t, got, want)
	back := &analyticsv1.DeviceState{}
	if err := protojson.Unmarshal(got, back); err != nil {
		t.Fatalf("protojson refuses the state: %v\n%s", err, got)
	}
	if !proto.Equal(back, msg) {
		t.Fatalf("decoded %v, want %v", back, msg)
	}
	// The publisher reads its own entries back to merge into them.
	again, err := decodeState(got)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Topics["air"].RecordedAt.Equal(s.Topics["air"].RecordedAt) || string(again.Topics["water"].Values) != `{"ph":7.1}` {
		t.Fatalf("read back %+v", again)
	}
}

// benchItem is a typical valid item: a dozen values, two unresolved.
func benchItem() Item {
	return Item{
		MessageID: uuid.New(), OrganizationSlug: "acme", DeviceUUID: uuid.NewString(), DeviceExternalID: "aq-01",
		Topic: "air", RecordedAt: time.Now(),
		Values: json.RawMessage(`{"co2":612,"temp":21.5,"humidity":40.2,"pm25":3.1,"pm10":7.9,"voc":0.12,` +
			`"pressure":1013.2,"battery":87,"rssi":-71,"ok":true,"mode":"auto","dew_point":7.4}`),
		Unresolved: json.RawMessage(`{"aqi":{"reason":"missing input o3"},"heat_index":{"reason":"missing input wind"}}`),
	}
}

// BenchmarkEncodeEvent compares the hand-written encoder with building the
// generated message from the same item and marshalling it with protojson,
// and with protojson's marshalling alone.
func BenchmarkEncodeEvent(b *testing.B) {
	it := benchItem()
	b.Run("hand-written", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = appendEvent(make([]byte, 0, 256+len(it.Values)+len(it.Unresolved)), &it)
		}
	})
	b.Run("protojson", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := protojson.Marshal(eventMessage(b, &it)); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The marshalling alone, as if the values were held as a Struct already.
	b.Run("protojson-marshal-only", func(b *testing.B) {
		msg := eventMessage(b, &it)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := protojson.Marshal(msg); err != nil {
				b.Fatal(err)
			}
		}
	})
}
