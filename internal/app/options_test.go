package app

import (
	"errors"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/tlsx"
)

// wantFlag fails unless err is nil for want "" or names the flag want.
func wantFlag(t *testing.T, err error, want string) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		return
	}
	var inv *config.Error
	if !errors.As(err, &inv) || inv.Flag != want {
		t.Fatalf("got %v, want --%s refused", err, want)
	}
}

func TestProcessValidate(t *testing.T) {
	tests := map[string]struct {
		change func(*Process)
		flag   string
	}{
		"default":                     {func(*Process) {}, ""},
		"a free port":                 {func(p *Process) { p.Listen = "127.0.0.1:0" }, ""},
		"sampled at zero":             {func(p *Process) { p.StageLogMode, p.StageLogSampleRate = "sampled", 0 }, ""},
		"no trust domain":             {func(p *Process) { p.TLSTrustDomain = "" }, ""},
		"listen without a port":       {func(p *Process) { p.Listen = "localhost" }, "listen"},
		"admin port out of range":     {func(p *Process) { p.AdminListen = ":70000" }, "admin-listen"},
		"no database":                 {func(p *Process) { p.DatabaseURL = "" }, "database-url"},
		"database url unparsable":     {func(p *Process) { p.DatabaseURL = "postgres://db:notaport/x" }, "database-url"},
		"log format":                  {func(p *Process) { p.LogFormat = "xml" }, "log-format"},
		"log level":                   {func(p *Process) { p.LogLevel = "loud" }, "log-level"},
		"no shutdown grace":           {func(p *Process) { p.ShutdownGrace = 0 }, "shutdown-grace"},
		"no request timeout":          {func(p *Process) { p.RequestTimeout = -time.Second }, "request-timeout"},
		"requests too small":          {func(p *Process) { p.MaxRecvMsgBytes = 4095 }, "max-recv-msg-bytes"},
		"requests too large":          {func(p *Process) { p.MaxRecvMsgBytes = 1<<30 + 1 }, "max-recv-msg-bytes"},
		"no streams":                  {func(p *Process) { p.MaxConcurrentStreams = 0 }, "max-concurrent-streams"},
		"no connection age":           {func(p *Process) { p.MaxConnectionAge = 0 }, "max-connection-age"},
		"stage-log mode":              {func(p *Process) { p.StageLogMode = "some" }, "stage-log-mode"},
		"sample rate above one":       {func(p *Process) { p.StageLogSampleRate = 1.5 }, "stage-log-sample-rate"},
		"stored payload too small":    {func(p *Process) { p.StoredPayloadBytes = 1023 }, "stored-payload-bytes"},
		"snapshot too large":          {func(p *Process) { p.StageLogSnapshotBytes = 64<<20 + 1 }, "stage-log-snapshot-bytes"},
		"health port out of range":    {func(p *Process) { p.HealthListen = ":99999" }, "health-listen"},
		"trust domain with a slash":   {func(p *Process) { p.TLSTrustDomain = "a/b" }, "tls-trust-domain"},
		"server name without TLS":     {func(p *Process) { p.TLSServerName = "validator" }, "tls-server-name"},
		"a certificate alone":         {func(p *Process) { p.TLS = tlsx.Files{CertFile: "c.pem"} }, "tls-cert-file"},
		"first bad setting is listen": {func(p *Process) { p.Listen, p.LogLevel = "x", "loud" }, "listen"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := DefaultOptions(Validator).Process
			p.DatabaseURL = "postgres://telemesh@db:5432/telemesh"
			tc.change(&p)
			wantFlag(t, p.Validate(), tc.flag)
		})
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := map[string]struct {
		stage  string
		change func(*Options)
		flag   string
	}{
		"gateway":                      {Gateway, func(*Options) {}, ""},
		"validator":                    {Validator, func(*Options) {}, ""},
		"deriver":                      {Deriver, func(*Options) {}, ""},
		"persister":                    {Persister, func(*Options) {}, ""},
		"publisher":                    {Publisher, func(*Options) {}, ""},
		"a list of replicas":           {Validator, func(o *Options) { o.Hops[Deriver] = "10.0.0.1:7072,10.0.0.2:7072" }, ""},
		"process first":                {Gateway, func(o *Options) { o.Process.Listen, o.Gateway.BatchSize = "x", 0 }, "listen"},
		"next hop with a scheme":       {Validator, func(o *Options) { o.Hops[Deriver] = "http://deriver:7072" }, "deriver-addr"},
		"no next hop":                  {Deriver, func(o *Options) { o.Hops[Persister] = "" }, "persister-addr"},
		"hops before the stage's own":  {Gateway, func(o *Options) { o.Hops[Validator], o.Gateway.BatchSize = "", 0 }, "validator-addr"},
		"gateway batch":                {Gateway, func(o *Options) { o.Gateway.BatchSize = 0 }, "batch-size"},
		"validator limits":             {Validator, func(o *Options) { o.Validator.Limits.MaxKeys = 0 }, "max-payload-keys"},
		"persister lease":              {Persister, func(o *Options) { o.Persister.PublishLease = time.Millisecond }, "publish-lease"},
		"publisher env":                {Publisher, func(o *Options) { o.Publisher.Env = "" }, "env"},
		"another stage's settings":     {Deriver, func(o *Options) { o.Gateway.BatchSize, o.Publisher.Env = 0, "" }, ""},
		"publisher replicas":           {Publisher, func(o *Options) { o.Publisher.NATS.Replicas = 9 }, "nats-replicas"},
		"validator's two next hops ok": {Validator, func(o *Options) { o.Hops[Persister] = "dns:///persister:7073" }, ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			o := DefaultOptions(tc.stage)
			o.Process.DatabaseURL = "postgres://telemesh@db:5432/telemesh"
			tc.change(&o)
			wantFlag(t, o.Validate(), tc.flag)
		})
	}
}

// TestOptionsFlags: each stage registers the process's flags, NATS's when
// it uses NATS, one per next hop and its own, all starting at the
// defaults, and they set the options.
func TestOptionsFlags(t *testing.T) {
	own := map[string]string{Gateway: "subjects", Validator: "max-payload-bytes", Persister: "publish-lease", Publisher: "kv-bucket"}
	for _, stage := range Stages {
		t.Run(stage, func(t *testing.T) {
			o := DefaultOptions(stage)
			fs := pflag.NewFlagSet(stage, pflag.ContinueOnError)
			o.RegisterFlags(fs)
			fs.VisitAll(func(f *pflag.Flag) {
				if f.DefValue != f.Value.String() {
					t.Errorf("--%s shows default %q but holds %q", f.Name, f.DefValue, f.Value.String())
				}
			})
			for s, flag := range own {
				if got := fs.Lookup(flag) != nil; got != (s == stage) {
					t.Errorf("--%s registered: %v", flag, got)
				}
			}
			if got := fs.Lookup("nats-url") != nil; got != UsesNATS(stage) {
				t.Errorf("--nats-url registered: %v", got)
			}
			args := []string{"--listen", "127.0.0.1:1", "--stage-log-mode", "failures"}
			for _, next := range NextHops[stage] {
				if got := fs.Lookup(next + "-addr").DefValue; got != "127.0.0.1:"+map[string]string{Validator: "7071", Deriver: "7072", Persister: "7073", Publisher: "7074"}[next] {
					t.Errorf("--%s-addr default %s", next, got)
				}
				args = append(args, "--"+next+"-addr", "dns:///"+next+":1")
			}
			if err := fs.Parse(args); err != nil {
				t.Fatal(err)
			}
			if o.Process.Listen != "127.0.0.1:1" || o.Process.StageLogMode != "failures" {
				t.Errorf("process settings not set: %+v", o.Process)
			}
			for _, next := range NextHops[stage] {
				if o.Hops[next] != "dns:///"+next+":1" {
					t.Errorf("hop %s = %q", next, o.Hops[next])
				}
			}
		})
	}
}
