package app

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	deriverv1 "github.com/telemesh/telemesh/gen/telemesh/deriver/v1"
	gatewayv1 "github.com/telemesh/telemesh/gen/telemesh/gateway/v1"
	persisterv1 "github.com/telemesh/telemesh/gen/telemesh/persister/v1"
	publisherv1 "github.com/telemesh/telemesh/gen/telemesh/publisher/v1"
	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	validatorv1 "github.com/telemesh/telemesh/gen/telemesh/validator/v1"

	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/envelope"
	"github.com/telemesh/telemesh/internal/natsx"
	"github.com/telemesh/telemesh/internal/roles"
	"github.com/telemesh/telemesh/internal/testcerts"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/testutil"
	"github.com/telemesh/telemesh/internal/tlsx"
)

// syncBuffer is a log destination shared by every stage of a mesh.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestMeshWithMTLSAndStageRoles runs the mesh as production should: every
// stage connects to Postgres as its own least-privilege role, the stages
// talk mutual TLS with certificates of their own, and each serves a
// plaintext health port. Every path that writes (completed, invalid,
// inactive, dead-lettered, parked and resumed, published) must work, and no
// stage may log a permission or TLS failure.
func TestMeshWithMTLSAndStageRoles(t *testing.T) {
	f := &fixture{t: t, db: testdb.New(t), ns: testnats.New(t), logger: testLogger(t)}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	ro := roles.Options{Prefix: "tma" + hex.EncodeToString(b) + "_"}
	t.Cleanup(func() {
		if err := roles.Drop(context.Background(), f.db.Pool, ro); err != nil {
			t.Errorf("drop roles: %v", err)
		}
	})
	if _, err := roles.Apply(t.Context(), f.db.Pool, ro); err != nil {
		t.Fatal(err)
	}
	f.seed()
	nc, err := nats.Connect(f.ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	f.nc = nc
	f.js, _ = jetstream.New(nc)

	ca := testcerts.NewCA(t, "telemesh test CA")
	files := map[string]tlsx.Files{}
	for _, stage := range Stages {
		p := testcerts.Write(t, t.TempDir(), ca.Identity(t, stage), ca)
		files[stage] = tlsx.Files{CertFile: p.Cert, KeyFile: p.Key, CAFile: p.CA}
	}
	roleURL := func(stage string) string {
		u, err := url.Parse(f.db.URL)
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.User(ro.RoleName(stage))
		return u.String()
	}

	logs := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	m, err := StartMesh(t.Context(), MeshOptions{
		DatabaseURL: f.db.URL,
		NATSURL:     f.ns.URL(),
		Tune: func(o *Options) {
			o.Process.DatabaseURL = roleURL(o.Stage)
			o.Process.TLS = files[o.Stage]
			o.Process.HealthListen = "127.0.0.1:0"
			o.Process.ShutdownGrace = 10 * time.Second
			o.Gateway.BatchAge = 2 * time.Millisecond
			o.Publisher.RetryEvery = 200 * time.Millisecond
			o.Publisher.RetryBase = 200 * time.Millisecond
			o.Publisher.RetryMax = time.Second
			if o.Stage == Validator {
				// A larger request is refused, so the gateway dead-letters it.
				o.Process.MaxRecvMsgBytes = 64 << 10
			}
		},
	}, logger)
	if err != nil {
		t.Fatalf("start mesh: %v\n%s", err, logs)
	}
	f.mesh = m
	t.Cleanup(func() {
		if err := m.Stop(); err != nil {
			t.Errorf("stop mesh: %v", err)
		}
	})
	f.waitStream()
	// The dry runs the fixture asks the gateway for are an operator's.
	operator := testcerts.Write(t, t.TempDir(), ca.Identity(t, Operator), ca)
	operatorTLS, err := tlsx.New(tlsx.Files{CertFile: operator.Cert, KeyFile: operator.Key, CAFile: operator.CA}, 0, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	f.gatewayCreds = operatorTLS.ClientCredentials("")

	f.setSwitch(&f.globex, false)
	f.waitOrgSwitch("globex-01", false)
	f.publish("devices.meter-01.telemetry", `{"temp_c": 10, "humidity": 50}`, "sec-valid")
	f.publish("devices.meter-01.telemetry", `{"humidity": 50}`, "sec-invalid")
	f.publish("devices.meter-02.telemetry", `{"temp_c": 10}`, "sec-inactive")
	f.publish("devices.meter-01.telemetry", `{"temp_c": 1, "pad": "`+strings.Repeat("x", 100_000)+`"}`, "sec-poison")
	f.publish("devices.globex-01.telemetry", `{"temp_c": 10}`, "sec-parked")
	f.waitMessages(1, "source_message_id = 'sec-parked' and status = 'parked'")
	f.setSwitch(&f.globex, true)

	f.waitMessages(1, "source_message_id = 'sec-invalid' and status = 'failed_validation'")
	f.waitMessages(1, "source_message_id = 'sec-inactive' and status = 'inactive_skipped'")
	f.waitMessages(1, "source_message_id = 'sec-poison' and status = 'failed_terminal'")
	f.waitMessages(2, "source_message_id in ('sec-valid', 'sec-parked') and status = 'completed'")
	f.waitCount(2, "both rows published", `select count(*) from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id
			where m.source_message_id in ('sec-valid', 'sec-parked') and t.processing_state = 'processed'`)
	// Let the publisher's retry loop run a few rounds as its role: it
	// leaves no trace to wait for unless it fails, which is what the log
	// check below looks for.
	time.Sleep(500 * time.Millisecond)

	// Each stage really is its role.
	rows, err := f.db.Pool.Query(t.Context(), `select distinct application_name, usename::text from pg_stat_activity
		where datname = current_database() and application_name like 'telemesh-%'`)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for rows.Next() {
		var app, user string
		if err := rows.Scan(&app, &user); err != nil {
			t.Fatal(err)
		}
		seen[strings.TrimPrefix(app, "telemesh-")] = user
	}
	rows.Close()
	for _, stage := range Stages {
		if seen[stage] != ro.RoleName(stage) {
			t.Errorf("stage %s connects as %q, want %s (sessions: %v)", stage, seen[stage], ro.RoleName(stage), seen)
		}
	}

	// The main port refuses plaintext; the health port answers it.
	healthAddrs := map[string]string{}
	for _, line := range strings.Split(logs.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "serving" {
			healthAddrs[rec["stage"].(string)], _ = rec["health"].(string)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), meshWait)
	defer cancel()
	for _, stage := range Stages {
		plainMain, _ := grpc.NewClient(m.GRPC[stage], grpc.WithTransportCredentials(insecure.NewCredentials()))
		short, shortCancel := context.WithTimeout(ctx, 500*time.Millisecond)
		if _, err := healthpb.NewHealthClient(plainMain).Check(short, &healthpb.HealthCheckRequest{}); err == nil {
			t.Errorf("%s answered plaintext on its gRPC port", stage)
		}
		shortCancel()
		_ = plainMain.Close()
		if healthAddrs[stage] == "" {
			t.Errorf("%s logged no health address", stage)
			continue
		}
		plainHealth, _ := grpc.NewClient(healthAddrs[stage], grpc.WithTransportCredentials(insecure.NewCredentials()))
		resp, err := healthpb.NewHealthClient(plainHealth).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("%s health port: %v, %v", stage, resp.GetStatus(), err)
		}
		_ = plainHealth.Close()
	}

	out := logs.String()
	for _, bad := range []string{"42501", "permission denied", "authentication handshake failed", "certificate", "tls:"} {
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, bad) && !strings.Contains(line, "TLS certificate loaded") {
				t.Errorf("a stage logged %q: %s", bad, line)
			}
		}
	}

	// Who may call whom, checked after the logs above: refusals are logged.
	checkCallers(t, m, ca, files)
	refusal := false
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, `"grpc.code":"PermissionDenied"`) && strings.Contains(line, `caller \"operator\" may not call /telemesh.persister.v1.PersisterService/Persist`) {
			refusal = true
		}
	}
	if !refusal {
		t.Error("the persister did not log the operator's refused call")
	}
}

func TestServeRejectsRefusedNATSCredentials(t *testing.T) {
	db := testdb.New(t)
	userServer := testnats.NewWith(t, func(o *server.Options) { o.Username, o.Password = "gateway", "right-password" })
	tokenServer := testnats.NewWith(t, func(o *server.Options) { o.Authorization = "right-token" })
	tests := []struct {
		name     string
		url      string
		auth     natsx.Auth
		wantFlag string
	}{
		{"user and password", userServer.URL(), natsx.Auth{User: "gateway", Password: "right-password"}, ""},
		{"token", tokenServer.URL(), natsx.Auth{Token: "right-token"}, ""},
		{"wrong password", userServer.URL(), natsx.Auth{User: "gateway", Password: "wrong-password"}, "nats-password"},
		{"wrong token", tokenServer.URL(), natsx.Auth{Token: "wrong-token"}, "nats-token"},
		{"no credentials", tokenServer.URL(), natsx.Auth{}, "nats-url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := DefaultOptions(Gateway)
			o.Process = DefaultProcess()
			o.Process.Listen, o.Process.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
			o.Process.DatabaseURL = db.URL
			o.Process.Instance = "test"
			o.Process.ShutdownGrace = 5 * time.Second
			o.Hops[Validator] = "127.0.0.1:1"
			o.NATS = NATS{URL: tt.url, Auth: tt.auth}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			serving := make(chan struct{})
			o.OnServing = func(string, string) { close(serving) }
			done := make(chan error, 1)
			go func() { done <- Serve(ctx, o, testLogger(t)) }()
			if tt.wantFlag == "" {
				select {
				case <-serving:
				case err := <-done:
					t.Fatalf("Serve: %v", err)
				case <-time.After(meshWait):
					t.Fatalf("not serving after %s", meshWait)
				}
				// The gateway made its stream over the authenticated connection.
				nc, err := nats.Connect(tt.url, nats.UserInfo("gateway", "right-password"), nats.Token("right-token"))
				if err != nil {
					t.Fatal(err)
				}
				defer nc.Close()
				js, _ := jetstream.New(nc)
				testutil.Eventually(t, meshWait, "stream TELEMETRY exists", func() error {
					_, err := js.Stream(t.Context(), "TELEMETRY")
					return err
				})
				cancel()
				if err := <-done; err != nil {
					t.Fatalf("Serve after stop: %v", err)
				}
				return
			}
			select {
			case err := <-done:
				var cfgErr *config.Error
				if !errors.As(err, &cfgErr) || cfgErr.Flag != tt.wantFlag || !strings.Contains(err.Error(), natsx.ErrAuth.Error()) {
					t.Fatalf("Serve = %v, want an invalid --%s refused by NATS", err, tt.wantFlag)
				}
				for _, secret := range []string{"wrong-password", "wrong-token", "right-"} {
					if strings.Contains(err.Error(), secret) {
						t.Fatalf("the error shows a secret: %v", err)
					}
				}
			case <-serving:
				t.Fatal("served with refused credentials")
			case <-time.After(meshWait):
				t.Fatalf("no error %s after refused credentials", meshWait)
			}
		})
	}
}

// checkCallers holds the stages of a mesh running mutual TLS to the table of
// who may call whom: a certificate of the wrong stage, or of operator
// tooling, is refused with PermissionDenied naming it and the method; the
// right caller gets through (to request validation, which an empty request
// fails).
func checkCallers(t *testing.T, m *Mesh, ca *testcerts.CA, stageFiles map[string]tlsx.Files) {
	t.Helper()
	operator := testcerts.Write(t, t.TempDir(), ca.Identity(t, Operator), ca)
	// A certificate of the CA with a common name and no identity.
	named := testcerts.Write(t, t.TempDir(), ca.Issue(t, Deriver), ca)
	as := func(f tlsx.Files, stage string) *grpc.ClientConn {
		t.Helper()
		certs, err := tlsx.New(f, 0, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(m.GRPC[stage], grpc.WithTransportCredentials(certs.ClientCredentials("")))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}
	op := tlsx.Files{CertFile: operator.Cert, KeyFile: operator.Key, CAFile: operator.CA}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	refused := func(what, who, method string, err error) {
		t.Helper()
		st, _ := status.FromError(err)
		if st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), who) || !strings.Contains(st.Message(), method) ||
			strings.Contains(st.Message(), "\n") {
			t.Errorf("%s: %v; want PermissionDenied in one line naming %s and %s", what, err, who, method)
		}
	}
	passes := func(what string, err error) {
		t.Helper()
		if c := status.Code(err); c != codes.OK && c != codes.InvalidArgument {
			t.Errorf("%s: %v; want it through to the service (OK, or InvalidArgument for an empty request)", what, err)
		}
	}

	// The operator's certificate: Ingest on the gateway, and nothing of the
	// chain itself.
	dry, err := gatewayv1.NewGatewayServiceClient(as(op, Gateway)).Ingest(ctx, &gatewayv1.IngestRequest{
		Subject: "devices.meter-01.telemetry", Payload: []byte(`{"temp_c": 10}`), DryRun: true,
	})
	if err != nil || dry.GetOutcome().GetStatus() != telemetryv1.MessageStatus_MESSAGE_STATUS_COMPLETED {
		t.Errorf("operator's dry-run Ingest: %v, %v; want completed", dry.GetOutcome(), err)
	}
	_, err = persisterv1.NewPersisterServiceClient(as(op, Persister)).Persist(ctx, &persisterv1.PersistRequest{WireVersion: envelope.WireVersion})
	refused("operator calling Persist", "operator", "/telemesh.persister.v1.PersisterService/Persist", err)
	_, err = deriverv1.NewDeriverServiceClient(as(op, Deriver)).Derive(ctx, &deriverv1.DeriveRequest{WireVersion: envelope.WireVersion})
	refused("operator calling Derive", "operator", "/telemesh.deriver.v1.DeriverService/Derive", err)
	_, err = persisterv1.NewPersisterServiceClient(as(tlsx.Files{CertFile: named.Cert, KeyFile: named.Key, CAFile: named.CA}, Persister)).
		Persist(ctx, &persisterv1.PersistRequest{WireVersion: envelope.WireVersion})
	refused("CN=deriver without an identity calling Persist", "no telemesh identity", "/telemesh.persister.v1.PersisterService/Persist", err)
	// Probes and grpcurl: health from any certificate of the CA, reflection
	// for the operator.
	if _, err := healthpb.NewHealthClient(as(op, Deriver)).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("operator's health check: %v", err)
	}
	if _, err := healthpb.NewHealthClient(as(stageFiles[Publisher], Gateway)).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("the publisher's health check of the gateway: %v", err)
	}
	if err := reflectionList(ctx, as(op, Validator)); err != nil {
		t.Errorf("operator's grpcurl list: %v", err)
	}
	refused("the deriver asking for reflection", "deriver", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
		reflectionList(ctx, as(stageFiles[Deriver], Validator)))

	// A stage's certificate at a stage it does not call.
	_, err = validatorv1.NewValidatorServiceClient(as(stageFiles[Deriver], Validator)).Validate(ctx, &validatorv1.ValidateRequest{WireVersion: envelope.WireVersion})
	refused("the deriver calling Validate", "deriver", "/telemesh.validator.v1.ValidatorService/Validate", err)
	_, err = publisherv1.NewPublisherServiceClient(as(stageFiles[Gateway], Publisher)).Publish(ctx, &publisherv1.PublishRequest{WireVersion: envelope.WireVersion})
	refused("the gateway calling Publish", "gateway", "/telemesh.publisher.v1.PublisherService/Publish", err)
	_, err = gatewayv1.NewGatewayServiceClient(as(stageFiles[Validator], Gateway)).Ingest(ctx, &gatewayv1.IngestRequest{
		Subject: "devices.meter-01.telemetry", Payload: []byte(`{}`), DryRun: true})
	refused("the validator calling Ingest", "validator", "/telemesh.gateway.v1.GatewayService/Ingest", err)

	// And the callers the chain has.
	_, err = validatorv1.NewValidatorServiceClient(as(stageFiles[Gateway], Validator)).Validate(ctx, &validatorv1.ValidateRequest{WireVersion: envelope.WireVersion})
	passes("the gateway calling Validate", err)
	_, err = deriverv1.NewDeriverServiceClient(as(stageFiles[Validator], Deriver)).Derive(ctx, &deriverv1.DeriveRequest{WireVersion: envelope.WireVersion})
	passes("the validator calling Derive", err)
	_, err = persisterv1.NewPersisterServiceClient(as(stageFiles[Validator], Persister)).Persist(ctx, &persisterv1.PersistRequest{WireVersion: envelope.WireVersion})
	passes("the validator calling Persist", err)
	_, err = persisterv1.NewPersisterServiceClient(as(stageFiles[Deriver], Persister)).Persist(ctx, &persisterv1.PersistRequest{WireVersion: envelope.WireVersion})
	passes("the deriver calling Persist", err)
	_, err = publisherv1.NewPublisherServiceClient(as(stageFiles[Persister], Publisher)).Publish(ctx, &publisherv1.PublishRequest{WireVersion: envelope.WireVersion})
	passes("the persister calling Publish", err)
}

// reflectionList asks what `grpcurl list` asks.
func reflectionList(ctx context.Context, conn *grpc.ClientConn) error {
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		_, err = stream.Recv()
		return err
	}
	_, err = stream.Recv()
	return err
}

func TestServeTLSNeedsTheStagesIdentity(t *testing.T) {
	db := testdb.New(t)
	ns := testnats.New(t)
	ca := testcerts.NewCA(t, "telemesh test CA")
	for _, tc := range []struct {
		name  string
		stage string
		cert  testcerts.Pair
		want  string // in the error; empty when the stage serves
	}{
		{"the operator's certificate on the validator", Validator, ca.Identity(t, Operator),
			`certificate "CN=operator" carries the identity operator, not validator: the deriver and persister would refuse its calls; issue it with the URI SAN spiffe://telemesh/validator`},
		{"a common name only", Gateway, ca.Issue(t, Gateway),
			`carries no telemesh identity, not gateway: the validator would refuse its calls`},
		{"its own identity", Deriver, ca.Identity(t, Deriver), ""},
		// The publisher calls no stage: it only serves.
		{"the publisher without one", Publisher, ca.Issue(t, Publisher), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := testcerts.Write(t, t.TempDir(), tc.cert, ca)
			o := DefaultOptions(tc.stage)
			o.Process = DefaultProcess()
			o.Process.Listen, o.Process.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
			o.Process.DatabaseURL = db.URL
			o.Process.Instance = "test"
			o.Process.ShutdownGrace = 5 * time.Second
			o.Process.TLS = tlsx.Files{CertFile: f.Cert, KeyFile: f.Key, CAFile: f.CA}
			for _, next := range NextHops[tc.stage] {
				o.Hops[next] = "127.0.0.1:1"
			}
			o.NATS.URL = ns.URL()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			serving := make(chan struct{})
			o.OnServing = func(string, string) { close(serving) }
			done := make(chan error, 1)
			go func() { done <- Serve(ctx, o, testLogger(t)) }()
			if tc.want == "" {
				select {
				case <-serving:
					cancel()
					<-done
				case err := <-done:
					t.Fatalf("Serve: %v", err)
				case <-time.After(20 * time.Second):
					t.Fatal("not serving after 20s")
				}
				return
			}
			select {
			case err := <-done:
				var cfgErr *config.Error
				if !errors.As(err, &cfgErr) || cfgErr.Flag != "tls-cert-file" || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Serve = %v, want an invalid --tls-cert-file saying %q", err, tc.want)
				}
			case <-serving:
				t.Fatal("served with a certificate its next hops refuse")
			case <-time.After(20 * time.Second):
				t.Fatal("no error 20s after start")
			}
		})
	}
}

// TestSecurityCallersFollowTheChain holds the table of who may call whom to
// the chain itself: each stage's service is open to exactly the stages
// that call it, the gateway's to operator tooling alone.
func TestSecurityCallersFollowTheChain(t *testing.T) {
	services := map[string]string{
		Gateway:   gatewayv1.GatewayService_ServiceDesc.ServiceName,
		Validator: validatorv1.ValidatorService_ServiceDesc.ServiceName,
		Deriver:   deriverv1.DeriverService_ServiceDesc.ServiceName,
		Persister: persisterv1.PersisterService_ServiceDesc.ServiceName,
		Publisher: publisherv1.PublisherService_ServiceDesc.ServiceName,
	}
	for _, stage := range Stages {
		var want []string
		for _, caller := range Stages {
			if slices.Contains(NextHops[caller], stage) {
				want = append(want, caller)
			}
		}
		if stage == Gateway {
			want = []string{Operator}
		}
		got := slices.Clone(Callers[services[stage]])
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s (%s) is open to %v, want %v", stage, services[stage], got, want)
		}
	}
	if len(Callers) != len(services)+3 {
		t.Errorf("the table has %d entries, want the five stage services, health and the two reflection services: %v", len(Callers), Callers)
	}
}
