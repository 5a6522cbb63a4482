package natsx_test

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/natsx"
	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/testutil"
)

func TestConnectWithCredentials(t *testing.T) {
	userServer := testnats.NewWith(t, func(o *server.Options) { o.Username, o.Password = "telemesh", "pw-of-the-gateway" })
	tokenServer := testnats.NewWith(t, func(o *server.Options) { o.Authorization = "token-of-the-gateway" })
	tests := []struct {
		name   string
		url    string
		auth   natsx.Auth
		secret string
		ok     bool
	}{
		{"user and password", userServer.URL(), natsx.Auth{User: "telemesh", Password: "pw-of-the-gateway"}, "pw-of-the-gateway", true},
		{"wrong password", userServer.URL(), natsx.Auth{User: "telemesh", Password: "not-the-password"}, "not-the-password", false},
		{"no credentials where a user is required", userServer.URL(), natsx.Auth{}, "", false},
		{"token", tokenServer.URL(), natsx.Auth{Token: "token-of-the-gateway"}, "token-of-the-gateway", true},
		{"wrong token", tokenServer.URL(), natsx.Auth{Token: "not-the-token"}, "not-the-token", false},
		{"no credentials where a token is required", tokenServer.URL(), natsx.Auth{}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			nc, err := natsx.Connect(tt.url, "test", tt.auth, logging.Discard())
			if !tt.ok {
				if !errors.Is(err, natsx.ErrAuth) {
					t.Fatalf("err = %v, want ErrAuth", err)
				}
				if tt.secret != "" && strings.Contains(err.Error(), tt.secret) {
					t.Fatalf("the error shows the secret: %v", err)
				}
				// Refused at once; a minute is far more than a busy
				// machine adds, and far less than retrying would take.
				if took := time.Since(start); took > time.Minute {
					t.Errorf("refused credentials took %s to report", took)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := js.AccountInfo(t.Context()); err != nil {
				t.Fatalf("JetStream with %s: %v", tt.name, err)
			}
		})
	}
}

func TestConnectWaitsForAServerNotUpYet(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	nc, err := natsx.Connect("nats://127.0.0.1:"+strconv.Itoa(port), "test", natsx.Auth{}, logging.Discard())
	if err != nil {
		t.Fatalf("a server not up yet is an error: %v", err)
	}
	defer nc.Close()
	testnats.NewWith(t, func(o *server.Options) { o.Port = port })
	testutil.Eventually(t, 2*time.Minute, "connected once the server started", func() error {
		if !nc.IsConnected() {
			return fmt.Errorf("status %s", nc.Status())
		}
		return nil
	})
}

func TestAuthMethod(t *testing.T) {
	for _, tt := range []struct {
		auth natsx.Auth
		want string
	}{
		{natsx.Auth{}, ""},
		{natsx.Auth{User: "u", Password: "p"}, "nats-password"},
		{natsx.Auth{User: "u", Token: "t"}, "nats-token"},
		{natsx.Auth{Token: "t", NKeyFile: "k"}, "nats-nkey-file"},
		{natsx.Auth{NKeyFile: "k", CredsFile: "c"}, "nats-creds-file"},
	} {
		if got := tt.auth.Method(); got != tt.want {
			t.Errorf("%+v.Method() = %q, want %q", tt.auth, got, tt.want)
		}
	}
}
