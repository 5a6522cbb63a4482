package publisher

import (
	"errors"

	"github.com/telemesh/telemesh/internal/reason"
)

// failureCode is the reason code of an item whose publish failed. Publish
// writes a valid item's device state first and publishes its event only
// once the state is written, recording the subjects it published to; so a
// valid item that failed without a subject failed at the KV bucket, and any
// other failure is its event's.
func failureCode(it *Item, r ItemResult) string {
	switch {
	case errors.Is(r.Err, ErrCASExhausted):
		return reason.KVConflict
	case !it.Invalid && len(r.Subjects) == 0:
		return reason.KVUnavailable
	default:
		return reason.PublishFailed
	}
}
