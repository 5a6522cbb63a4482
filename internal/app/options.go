package app

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/telemesh/telemesh/gateway"
	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/natsx"
	"github.com/telemesh/telemesh/services/persister"
	"github.com/telemesh/telemesh/services/publisher"
	"github.com/telemesh/telemesh/services/validator"
)

// defaultPorts are each stage's gRPC and admin ports when none are given,
// the ports the container image and the Helm chart use.
var defaultPorts = map[string][2]int{
	Gateway:   {7070, 9070},
	Validator: {7071, 9071},
	Deriver:   {7072, 9072},
	Persister: {7073, 9073},
	Publisher: {7074, 9074},
}

// NATS holds a stage's NATS connection settings.
type NATS struct {
	URL  string
	Auth natsx.Auth
}

// DefaultNATS returns the NATS settings used when none are given: the
// server on this machine's standard port, without credentials.
func DefaultNATS() NATS {
	return NATS{URL: "nats://127.0.0.1:4222"}
}

// RegisterFlags registers the NATS connection settings on fs, with n's
// values as their defaults.
func (n *NATS) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&n.URL, "nats-url", n.URL, "NATS server URL(s), comma-separated")
	fs.StringVar(&n.Auth.User, "nats-user", n.Auth.User, "NATS user name")
	fs.StringVar(&n.Auth.Password, "nats-password", n.Auth.Password, "NATS password")
	fs.StringVar(&n.Auth.Token, "nats-token", n.Auth.Token, "NATS token")
	fs.StringVar(&n.Auth.NKeyFile, "nats-nkey-file", n.Auth.NKeyFile, "NATS NKey seed file")
	fs.StringVar(&n.Auth.CredsFile, "nats-creds-file", n.Auth.CredsFile, "NATS credentials (JWT) file")
	config.MarkSecret(fs, "nats-url", "nats-password", "nats-token")
}

// DefaultOptions returns the settings of a stage when none are given: it
// listens on its own ports on every address and calls its next hops on
// theirs on loopback.
func DefaultOptions(stage string) Options {
	o := Options{
		Stage:     stage,
		Process:   DefaultProcess(),
		NATS:      DefaultNATS(),
		Hops:      map[string]string{},
		Gateway:   gateway.DefaultConfig(),
		Validator: validator.DefaultConfig(),
		Persister: persister.DefaultConfig(),
		Publisher: publisher.DefaultConfig(),
	}
	ports := defaultPorts[stage]
	o.Process.Listen = fmt.Sprintf(":%d", ports[0])
	o.Process.AdminListen = fmt.Sprintf(":%d", ports[1])
	for _, next := range NextHops[stage] {
		o.Hops[next] = fmt.Sprintf("127.0.0.1:%d", defaultPorts[next][0])
	}
	return o
}

// RegisterFlags registers every setting of o's stage on fs, with o's
// values as their defaults: the process's, the NATS connection's when the
// stage uses NATS, one target per next hop (--<stage>-addr) and the
// stage's own.
func (o *Options) RegisterFlags(fs *pflag.FlagSet) {
	o.Process.RegisterFlags(fs)
	if UsesNATS(o.Stage) {
		o.NATS.RegisterFlags(fs)
	}
	if o.Hops == nil {
		o.Hops = map[string]string{}
	}
	for _, next := range NextHops[o.Stage] {
		fs.Var(hopTarget{hops: o.Hops, stage: next}, next+"-addr", next+" target: host:port, dns:///host:port, or a comma-separated list of replicas")
	}
	switch o.Stage {
	case Gateway:
		o.Gateway.RegisterFlags(fs)
	case Validator:
		o.Validator.RegisterFlags(fs)
	case Persister:
		o.Persister.RegisterFlags(fs)
	case Publisher:
		o.Publisher.RegisterFlags(fs)
	}
}

// Validate checks every setting of o's stage and names the first bad one
// by its flag: the process's, the identity its certificate carries, the
// next hops' targets, then the stage's own.
func (o *Options) Validate() error {
	if err := o.Process.Validate(); err != nil {
		return err
	}
	if err := o.CheckIdentity(); err != nil {
		return err
	}
	for _, next := range NextHops[o.Stage] {
		if err := config.CheckTarget(next+"-addr", o.Hops[next]); err != nil {
			return err
		}
	}
	switch o.Stage {
	case Gateway:
		return o.Gateway.Validate()
	case Validator:
		return o.Validator.Validate()
	case Persister:
		return o.Persister.Validate()
	case Publisher:
		return o.Publisher.Validate()
	}
	return nil
}

// hopTarget is the flag of one next hop's target, kept in its Options'
// Hops.
type hopTarget struct {
	hops  map[string]string
	stage string
}

func (h hopTarget) String() string { return h.hops[h.stage] }

func (h hopTarget) Set(v string) error {
	h.hops[h.stage] = v
	return nil
}

// Type is "string", as the target is written on the command line.
func (hopTarget) Type() string { return "string" }
