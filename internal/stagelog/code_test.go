package stagelog

import (
	"testing"

	"github.com/google/uuid"

	"github.com/telemesh/telemesh/internal/reason"
	"github.com/telemesh/telemesh/internal/testdb"
)

// An entry's code is written to reason_code; a completed entry has none.
func TestWriteKeepsTheReasonCode(t *testing.T) {
	db := testdb.New(t)
	w, err := New(ModeAll, 0, "test")
	if err != nil {
		t.Fatal(err)
	}
	halted, done := uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())
	err = w.Write(t.Context(), db.Pool, []Entry{
		{MessageID: halted, DedupeKey: "k1", Stage: "ingress", Status: StatusHalted, Code: reason.InvalidJSON,
			Errors: map[string]any{"reason": "payload is not a JSON object: unexpected end of JSON input at offset 15"}},
		{MessageID: done, DedupeKey: "k2", Stage: "ingress", Status: StatusCompleted},
	})
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[uuid.UUID]string{halted: reason.InvalidJSON, done: "(null)"} {
		var got string
		if err := db.Pool.QueryRow(t.Context(), `select coalesce(reason_code, '(null)') from ingestion_stage_logs where message_id = $1`, id).
			Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("reason_code of %s = %q, want %q", id, got, want)
		}
	}
}
