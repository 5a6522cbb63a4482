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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/telemesh/telemesh/internal/config"
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
	f := &fixture{t: t, db: testdb.New(t), ns: testnats.New(t)}
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
		p := testcerts.Write(t, t.TempDir(), ca.Issue(t, stage), ca)
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
	gatewayTLS, err := tlsx.New(files[Gateway], 0, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	f.gatewayCreds = gatewayTLS.ClientCredentials("")

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
