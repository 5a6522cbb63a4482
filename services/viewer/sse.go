package viewer

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// recentOnConnect is how many recent events a page that connects afresh
// gets, so it does not start empty.
const recentOnConnect = 50

// maxBatch bounds the events written before one flush.
const maxBatch = 64

// handleEvents is the live connection: server-sent events of the
// telemetry, invalid and (when asked with raw=1) raw messages that match
// the org, device and topic parameters, the health panel as it refreshes,
// and a ping every heartbeat. A page that reconnects sends Last-Event-ID
// and gets what it missed, if the viewer still has it.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := filter{org: q.Get("org"), device: q.Get("device"), topic: q.Get("topic")}
	raw := q.Get("raw") == "1" || q.Get("raw") == "true"
	lastID := r.Header.Get("Last-Event-ID")
	if lastEventParam.check("Last-Event-ID", lastID) != nil {
		// EventSource sends the header again on every reconnect by itself:
		// one it cannot use is ignored rather than refused, or the page
		// could never reconnect. It is never more than compared.
		lastID = ""
	}
	if lastID == "" {
		lastID = q.Get("last_event_id")
	}

	c, first, gap, err := s.hub.subscribe(s.clientKey(r), f, raw, lastID, recentOnConnect)
	if err != nil {
		s.logger.Debug("viewer: live connection refused", "remote", r.RemoteAddr, "err", err)
		w.Header().Set("Retry-After", "10")
		s.writeError(w, r, err)
		return
	}
	defer s.hub.unsubscribe(c)

	// The server's read and write timeouts bound ordinary requests; this
	// one lasts as long as the page is open. Each write gets its own
	// deadline instead, so a page that stops reading is let go.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)

	bw := bufio.NewWriterSize(w, 16<<10)
	flush := func() error {
		if err := rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		return rc.Flush()
	}

	// retry tells EventSource how soon to reconnect after a drop.
	fmt.Fprintf(bw, "retry: 2000\n\n")
	hello, _ := json.Marshal(map[string]any{
		"server_time": time.Now().UTC(), "heartbeat_ms": s.cfg.Heartbeat.Milliseconds(), "raw": raw,
		"filter": map[string]string{"org": f.org, "device": f.device, "topic": f.topic}, "resumed": lastID != "" && !gap,
	})
	writeEvent(bw, "hello", "", hello)
	if gap {
		writeEvent(bw, kindNotice, "", noticeJSON("gap", "some events were missed while disconnected; the viewer no longer has them"))
	}
	for _, e := range first {
		s.writeHubEvent(bw, e)
	}
	if err := flush(); err != nil {
		return
	}

	beat := time.NewTicker(s.cfg.Heartbeat)
	defer beat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.stopping:
			return
		case <-beat.C:
			writeEvent(bw, "ping", "", fmt.Appendf(nil, `{"t":%q}`, time.Now().UTC().Format(time.RFC3339Nano)))
		case e := <-c.ch:
			s.writeHubEvent(bw, e)
			// Write what else is waiting before one flush.
		more:
			for range maxBatch {
				select {
				case e := <-c.ch:
					s.writeHubEvent(bw, e)
				default:
					break more
				}
			}
			if n := c.dropped.Swap(0); n > 0 {
				writeEvent(bw, "dropped", "", fmt.Appendf(nil, `{"count":%d}`, n))
			}
			beat.Reset(s.cfg.Heartbeat)
		}
		if err := flush(); err != nil {
			s.logger.Debug("live connection ended", "err", err)
			return
		}
	}
}

// writeHubEvent writes e with its id when it has one.
func (s *Server) writeHubEvent(w *bufio.Writer, e *event) {
	id := ""
	if e.seq > 0 {
		id = s.hub.eventID(e)
	}
	writeEvent(w, e.kind, id, e.data)
}

// writeEvent writes one server-sent event. data is JSON, so it holds no
// newline.
func writeEvent(w *bufio.Writer, kind, id string, data []byte) {
	if id != "" {
		w.WriteString("id: ")
		w.WriteString(id)
		w.WriteByte('\n')
	}
	w.WriteString("event: ")
	w.WriteString(kind)
	w.WriteString("\ndata: ")
	w.Write(data)
	w.WriteString("\n\n")
}

// noticeJSON encodes a notice for the page.
func noticeJSON(code, text string) []byte {
	b, _ := json.Marshal(map[string]string{"code": code, "text": text})
	return b
}
