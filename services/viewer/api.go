package viewer

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/catalog"
	"github.com/telemesh/telemesh/internal/ops"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/pipeline"
)

// maxBody bounds the body of a change request.
const maxBody = 16 << 10

// maxRetryIDs bounds the rows one retry request names.
const maxRetryIDs = 100

// routes returns the viewer's handler: the page, its assets and its API.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", serveAsset("index.html"))
	mux.HandleFunc("GET /static/{file}", func(w http.ResponseWriter, r *http.Request) {
		serveAsset(r.PathValue("file"))(w, r)
	})
	mux.HandleFunc("GET /favicon.ico", serveAsset("favicon.svg"))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", s.handleReady)
	// Every API endpoint names the parameters it takes (params.go).
	mux.HandleFunc("GET /api/meta", s.checked(noParams, nil, s.handleMeta))
	mux.HandleFunc("GET /api/catalog", s.checked(noParams, nil, s.handleCatalog))
	mux.HandleFunc("GET /api/events", s.checked(eventsParams, nil, s.handleEvents))
	mux.HandleFunc("GET /api/health", s.checked(noParams, nil, s.handleHealth))
	mux.HandleFunc("GET /api/devices/{device}", s.checked(deviceParams, devicePath, s.handleDevice))
	mux.HandleFunc("GET /api/trace", s.checked(traceParams, nil, s.handleTrace))
	mux.HandleFunc("POST /api/auth", s.mutating(s.checked(noParams, nil, func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})))
	mux.HandleFunc("POST /api/publish-failed/retry", s.mutating(s.checked(noParams, nil, s.handleRetry)))
	mux.HandleFunc("POST /api/switches", s.mutating(s.checked(noParams, nil, s.handleSwitch)))
	return securityHeaders(mux)
}

// securityHeaders sets the headers every response carries. The page loads
// nothing from elsewhere, runs no inline script and may not be framed.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
			"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		if strings.HasPrefix(r.URL.Path, "/api/") {
			h.Set("Cache-Control", "no-store")
		}
		next.ServeHTTP(w, r)
	})
}

// authorize checks the request's bearer token against the configured one,
// in constant time (both are hashed first, so their lengths do not show
// either).
func (s *Server) authorize(r *http.Request) error {
	if s.tokenHash == nil {
		return ErrNoToken
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || got == "" {
		return ErrUnauthorized
	}
	h := sha256.Sum256([]byte(got))
	if subtle.ConstantTimeCompare(h[:], s.tokenHash) != 1 {
		return ErrUnauthorized
	}
	return nil
}

// mutating guards a handler that changes something with the token.
func (s *Server) mutating(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := s.authorize(r); err != nil {
			if errors.Is(err, ErrUnauthorized) {
				s.logger.Info("viewer: change refused", "path", r.URL.Path, "remote", r.RemoteAddr, "err", err)
			}
			s.writeError(w, r, err)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		next(w, r)
	}
}

// writeError answers with err's status and one line. The errors a request
// can cause (a bad parameter, a missing token, something not found, too
// many connections) say what is wrong; any other error is logged with a new
// error id and the answer gives only that id, so no Postgres or Go error
// text reaches a browser.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := 0
	switch {
	case errors.Is(err, ErrNoToken):
		status = http.StatusForbidden
	case errors.Is(err, ErrUnauthorized):
		status = http.StatusUnauthorized
		w.Header().Set("WWW-Authenticate", `Bearer realm="telemesh-viewer"`)
	case errors.Is(err, ErrTooManyFromClient):
		status = http.StatusTooManyRequests
	case errors.Is(err, ErrTooManyClients):
		status = http.StatusServiceUnavailable
	case errors.Is(err, ErrBadRequest):
		status = http.StatusBadRequest
	case errors.Is(err, ops.ErrNotFound):
		status = http.StatusNotFound
	}
	if status != 0 {
		writeJSON(w, status, map[string]string{"error": err.Error()})
		return
	}
	id := s.logFailure(r, "viewer: request failed", err)
	if errors.Is(err, context.DeadlineExceeded) {
		writeJSON(w, http.StatusGatewayTimeout, map[string]string{
			"error": "the database or NATS did not answer in time (error id " + id + " in the viewer's log)"})
		return
	}
	writeJSON(w, http.StatusInternalServerError, map[string]string{
		"error": "the viewer could not answer (error id " + id + " in the viewer's log)"})
}

// logFailure logs an unexpected failure of a request with a new error id
// and returns the id, which the answer gives instead of the error.
func (s *Server) logFailure(r *http.Request, msg string, err error) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	level := slog.LevelError
	if r.Context().Err() != nil {
		// The page went away: nothing failed that anyone is waiting for.
		level = slog.LevelDebug
	}
	s.logger.Log(r.Context(), level, msg, "error_id", id, "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "err", err)
	return id
}

// writeJSON answers with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"cannot encode the answer"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// badRequest returns an error wrapping ErrBadRequest.
func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, args...))
}

// handleReady answers 200 when Postgres and NATS are usable.
func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	checks := map[string]string{"postgres": "ok", "nats": "ok"}
	ok := true
	// The page's port answers anyone: the reasons go to the log, not here.
	if err := pg.Ping(ctx, s.pool); err != nil {
		checks["postgres"], ok = "unavailable (error id "+s.logFailure(r, "viewer: not ready", err)+")", false
	}
	if err := s.natsReady(ctx); err != nil {
		checks["nats"], ok = "unavailable (error id "+s.logFailure(r, "viewer: not ready", err)+")", false
	}
	status := http.StatusOK
	if !ok {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, map[string]any{"ready": ok, "checks": checks})
}

// handleMeta tells the page how this viewer is set up.
func (s *Server) handleMeta(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"version":            s.cfg.Version,
		"read_only":          s.tokenHash == nil,
		"env":                s.cfg.Env,
		"stream":             s.cfg.Stream,
		"consumer":           s.cfg.Consumer,
		"bucket":             s.cfg.Bucket,
		"history_minutes":    s.cfg.HistoryMinutes,
		"heartbeat_ms":       s.cfg.Heartbeat.Milliseconds(),
		"analytics_subjects": s.analyticsSubjects(),
		"raw_subjects":       s.raw.currentSubjects(),
		"raw_rate":           s.cfg.RawRate,
		"switch_names":       switchNames(),
		"stages":             pipeline.Stages(),
		"stage_services":     stageServices(),
	})
}

// stageServices maps each stage of the stage logs to the stage service that
// runs it, whose gRPC health the panel shows beside it.
func stageServices() map[pipeline.Stage]pipeline.Service {
	out := map[pipeline.Stage]pipeline.Service{}
	for _, s := range pipeline.Stages() {
		out[s] = s.Service()
	}
	return out
}

// switchNames lists the switches, in the order the page shows them: the
// pipeline's first, the one an operator reaches for.
func switchNames() []string {
	var names []string
	for _, sw := range pipeline.Switches() {
		names = append(names, string(sw))
	}
	return names
}

// snapshot returns the catalog, loading it now if it was not yet.
func (s *Server) snapshot(ctx context.Context) (*catalog.Snapshot, error) {
	if snap := s.catalog.Snapshot(); snap != nil {
		return snap, nil
	}
	if err := s.catalog.Load(ctx); err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	return s.catalog.Snapshot(), nil
}

// catalogDevice is a device as the page's filters and device panel see it.
type catalogDevice struct {
	UUID         string   `json:"uuid"`
	ExternalID   string   `json:"external_id"`
	Organization string   `json:"organization"`
	Type         string   `json:"type"`
	Active       bool     `json:"active"`
	Topics       []string `json:"topics"`
	// Derived lists each topic's derived parameters.
	Derived map[string][]string `json:"derived"`
}

// describe returns what the page shows of a device.
func describe(snap *catalog.Snapshot, d *catalog.Device) catalogDevice {
	cd := catalogDevice{UUID: d.ID.String(), ExternalID: d.ExternalID, Active: d.Active, Topics: []string{}, Derived: map[string][]string{}}
	if o := snap.Organizations[d.OrganizationID]; o != nil {
		cd.Organization = o.Slug
	}
	if dt := snap.DeviceTypes[d.DeviceTypeID]; dt != nil {
		cd.Type = dt.Name
		for suffix, t := range dt.Topics {
			cd.Topics = append(cd.Topics, suffix)
			keys := []string{}
			for _, dv := range t.Derived {
				keys = append(keys, dv.Key)
			}
			sort.Strings(keys)
			cd.Derived[suffix] = keys
		}
		sort.Strings(cd.Topics)
	}
	return cd
}

// handleCatalog lists the organizations, devices and topics for the
// filters.
func (s *Server) handleCatalog(w http.ResponseWriter, r *http.Request) {
	snap, err := s.snapshot(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	type org struct {
		Slug string `json:"slug"`
		Name string `json:"name"`
	}
	orgs := []org{}
	for _, o := range snap.Organizations {
		orgs = append(orgs, org{o.Slug, o.Name})
	}
	sort.Slice(orgs, func(i, j int) bool { return orgs[i].Slug < orgs[j].Slug })
	devices := []catalogDevice{}
	topics := map[string]bool{}
	for _, d := range snap.DevicesByExternalID {
		cd := describe(snap, d)
		for _, t := range cd.Topics {
			topics[t] = true
		}
		devices = append(devices, cd)
	}
	sort.Slice(devices, func(i, j int) bool { return devices[i].ExternalID < devices[j].ExternalID })
	topicList := []string{}
	for t := range topics {
		topicList = append(topicList, t)
	}
	sort.Strings(topicList)
	writeJSON(w, http.StatusOK, map[string]any{"organizations": orgs, "devices": devices, "topics": topicList})
}

// handleHealth returns the health panel.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	h, err := s.health.get(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, h)
}

// historyPoint is one telemetry row of a device's history.
type historyPoint struct {
	MessageID     uuid.UUID       `json:"message_id"`
	RecordedAt    time.Time       `json:"recorded_at"`
	Topic         string          `json:"topic"`
	State         string          `json:"state"`
	Values        json.RawMessage `json:"values"`
	Unresolved    json.RawMessage `json:"unresolved"`
	FailureReason string          `json:"failure_reason,omitempty"`
}

// invalidMessage is a message of a device that failed.
type invalidMessage struct {
	MessageID  uuid.UUID       `json:"message_id"`
	ReceivedAt time.Time       `json:"received_at"`
	Status     string          `json:"status"`
	Reason     string          `json:"reason"`
	Subject    string          `json:"subject"`
	Errors     json.RawMessage `json:"errors,omitempty"`
}

// maxHistory bounds the rows of a device's history.
const maxHistory = 2000

// handleDevice returns one device (by uuid or external id): its latest
// values from the KV bucket, its telemetry over the last minutes, and its
// messages that failed; with history=0 only the latest values.
func (s *Server) handleDevice(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	ref := r.PathValue("device")
	minutes := s.cfg.HistoryMinutes
	if v := r.URL.Query().Get("minutes"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 24*60 {
			s.writeError(w, r, badRequest("minutes: want %s", minutesParam.want))
			return
		}
		minutes = n
	}
	snap, err := s.snapshot(ctx)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	d := snap.DevicesByExternalID[ref]
	if d == nil {
		if id, err := uuid.Parse(ref); err == nil {
			d = snap.Devices[id]
		}
	}
	if d == nil {
		s.writeError(w, r, fmt.Errorf("device %q: %w", ref, ops.ErrNotFound))
		return
	}
	out := map[string]any{"device": describe(snap, d), "minutes": minutes}

	kvCtx, kvCancel := context.WithTimeout(ctx, 3*time.Second)
	// The page shows state_error in place of the latest values: it says
	// what an operator can act on, and leaves the rest to the log.
	if kv, err := s.js.KeyValue(kvCtx, s.cfg.Bucket); errors.Is(err, jetstream.ErrBucketNotFound) {
		out["state_error"] = fmt.Sprintf("KV bucket %s does not exist (yet): the publisher creates it", s.cfg.Bucket)
	} else if err != nil {
		out["state_error"] = fmt.Sprintf("KV bucket %s unavailable (error id %s in the viewer's log)", s.cfg.Bucket,
			s.logFailure(r, "viewer: read the KV bucket", err))
	} else if entry, err := kv.Get(kvCtx, d.ID.String()); errors.Is(err, jetstream.ErrKeyNotFound) {
		out["state"] = nil
	} else if err != nil {
		out["state_error"] = fmt.Sprintf("latest values unavailable (error id %s in the viewer's log)",
			s.logFailure(r, "viewer: read a device state", err))
	} else if state, err := deviceState(entry.Value()); err != nil {
		out["state_error"] = fmt.Sprintf("the latest values are not a device state (error id %s in the viewer's log)",
			s.logFailure(r, "viewer: decode a device state", err))
	} else {
		out["state"] = state
		out["state_revision"] = entry.Revision()
	}
	kvCancel()
	if r.URL.Query().Get("history") == "0" {
		// The page refreshes the latest values alone as events arrive.
		writeJSON(w, http.StatusOK, out)
		return
	}

	rows, err := s.pool.Query(ctx, `select id, recorded_at, topic, processing_state, transformed_values, unresolved_values,
			coalesce(failure_reason, '')
		from device_telemetry_logs
		where device_id = $1 and recorded_at > now() - make_interval(mins => $2)
		  and processing_state in ('processed', 'pending', 'publish_failed')
		order by recorded_at desc limit $3`, d.ID, minutes, maxHistory)
	if err != nil {
		s.writeError(w, r, fmt.Errorf("history: %w", err))
		return
	}
	history, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (historyPoint, error) {
		var p historyPoint
		err := r.Scan(&p.MessageID, &p.RecordedAt, &p.Topic, &p.State, &p.Values, &p.Unresolved, &p.FailureReason)
		return p, err
	})
	if err != nil {
		s.writeError(w, r, fmt.Errorf("history: %w", err))
		return
	}
	// Oldest first, as the charts draw them.
	for i, j := 0, len(history)-1; i < j; i, j = i+1, j-1 {
		history[i], history[j] = history[j], history[i]
	}
	out["history"] = history

	rows, err = s.pool.Query(ctx, `select m.id, m.received_at, m.status, coalesce(m.error_summary, ''), m.source_subject,
			t.validation_errors
		from ingestion_messages m
		left join device_telemetry_logs t on t.id = m.id
		where m.device_id = $1 and m.received_at > now() - make_interval(mins => $2)
		  and m.status in ('failed_validation', 'failed_terminal')
		order by m.received_at desc limit 50`, d.ID, minutes)
	if err != nil {
		s.writeError(w, r, fmt.Errorf("invalid messages: %w", err))
		return
	}
	invalid, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (invalidMessage, error) {
		var m invalidMessage
		err := r.Scan(&m.MessageID, &m.ReceivedAt, &m.Status, &m.Reason, &m.Subject, &m.Errors)
		return m, err
	})
	if err != nil {
		s.writeError(w, r, fmt.Errorf("invalid messages: %w", err))
		return
	}
	out["invalid"] = invalid
	writeJSON(w, http.StatusOK, out)
}

// handleTrace finds a message by id, dedupe key or device message id and
// returns what every stage did to it.
func (s *Server) handleTrace(w http.ResponseWriter, r *http.Request) {
	ref := strings.TrimSpace(r.URL.Query().Get("ref"))
	if ref == "" {
		s.writeError(w, r, badRequest("ref: give a message id, a dedupe key or a device message id"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	tr, err := ops.TraceMessage(ctx, s.pool, ref)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := map[string]any{"trace": tr, "chain": pipeline.Stages()}
	if snap := s.catalog.Snapshot(); snap != nil {
		if id := tr.Message.OrganizationID; id != nil && snap.Organizations[*id] != nil {
			out["organization"] = snap.Organizations[*id].Slug
		}
		if id := tr.Message.DeviceID; id != nil && snap.Devices[*id] != nil {
			out["device"] = snap.Devices[*id].ExternalID
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// retryRequest names the publish_failed rows to retry, or all of them.
type retryRequest struct {
	// MessageIDs are read as text so that one that is not a uuid is
	// answered in the request's terms.
	MessageIDs []string `json:"message_ids"`
	All        bool     `json:"all"`
}

// handleRetry makes publish_failed rows due now, so the publisher's retry
// loop publishes them on its next pass.
func (s *Server) handleRetry(w http.ResponseWriter, r *http.Request) {
	var req retryRequest
	if err := decodeBody(r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	var (
		n   int64
		err error
	)
	switch {
	case req.All && len(req.MessageIDs) > 0:
		err = badRequest("either message_ids or all, not both")
	case req.All:
		n, err = ops.ReplayPublishFailed(r.Context(), s.pool, ops.Filter{})
	case len(req.MessageIDs) == 0:
		err = badRequest("message_ids: name at least one row, or set all")
	case len(req.MessageIDs) > maxRetryIDs:
		err = badRequest("message_ids: at most %d at once", maxRetryIDs)
	default:
		ids := make([]uuid.UUID, 0, len(req.MessageIDs))
		for i, v := range req.MessageIDs {
			id, perr := uuid.Parse(v)
			if perr != nil || len(v) != 36 {
				err = badRequest("message_ids: item %d is not a message id (a uuid)", i+1)
				break
			}
			ids = append(ids, id)
		}
		if err == nil {
			n, err = ops.ReplayPublishFailedRows(r.Context(), s.pool, ids)
		}
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.logger.Info("viewer: publish retry asked", "rows", n, "all", req.All, "remote", r.RemoteAddr)
	s.health.refreshSoon()
	writeJSON(w, http.StatusOK, map[string]any{"rows": n})
}

// switchRequest sets one switch, globally or for one organization.
type switchRequest struct {
	Organization string `json:"organization"`
	Switch       string `json:"switch"`
	On           *bool  `json:"on"`
}

// handleSwitch turns one pipeline switch on or off.
func (s *Server) handleSwitch(w http.ResponseWriter, r *http.Request) {
	var req switchRequest
	if err := decodeBody(r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if _, ok := pipeline.ParseSwitch(req.Switch); !ok {
		s.writeError(w, r, badRequest("switch: one of %s", strings.Join(switchNames(), ", ")))
		return
	}
	if err := orgParam.check("organization", req.Organization); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.On == nil {
		s.writeError(w, r, badRequest("on: true or false is required"))
		return
	}
	if err := ops.SetSwitch(r.Context(), s.pool, req.Organization, req.Switch, *req.On, "viewer"); err != nil {
		s.writeError(w, r, err)
		return
	}
	scope := "global"
	if req.Organization != "" {
		scope = req.Organization
	}
	s.logger.Warn("viewer: pipeline switch changed", "switch", req.Switch, "on", *req.On, "scope", scope, "remote", r.RemoteAddr)
	s.health.refreshSoon()
	rows, err := s.state.Switches(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"switches": rows})
}
