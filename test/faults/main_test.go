package faults_test

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// EnvMode selects the form of the suite: "long" for the long form that
// `make test-faults` runs; anything else, or nothing, for the short form.
const EnvMode = "TELEMESH_FAULTS"

// EnvNATSServer names a nats-server binary to use instead of the one built
// from the version go.mod pins (for instance the distribution's
// /usr/sbin/nats-server).
const EnvNATSServer = "TELEMESH_FAULTS_NATS_SERVER"

// EnvLogs names a directory where every process the suite starts appends
// its whole output, one file per test and process; without it only the
// last lines are kept, and shown when a fault fails.
const EnvLogs = "TELEMESH_FAULTS_LOGS"

// startWait bounds the wait for something the suite starts (a process,
// the stream) to be ready: generous, because on a busy machine a start can
// take seconds, and a start that works never waits it out.
const startWait = 2 * time.Minute

var (
	// telemeshBin and natsServerBin are the binaries under test, built once
	// by TestMain.
	telemeshBin   string
	natsServerBin string
	// buildErr says why they could not be built; every test then fails
	// with it rather than the whole binary exiting without a test name.
	buildErr error
)

func TestMain(m *testing.M) {
	flag.Parse() // testing.Short needs the flags
	dir, err := os.MkdirTemp("", "telemesh-faults-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buildErr = buildBinaries(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildBinaries builds telemesh and, unless EnvNATSServer names one, the
// nats-server of the version go.mod pins, so NATS runs as its own process
// and restarts on its own store as it would in production.
func buildBinaries(dir string) error {
	if testing.Short() {
		return nil
	}
	telemeshBin = filepath.Join(dir, "telemesh")
	natsServerBin = os.Getenv(EnvNATSServer)
	builds := [][]string{{"-o", telemeshBin, "github.com/telemesh/telemesh/cmd/telemesh"}}
	if natsServerBin == "" {
		natsServerBin = filepath.Join(dir, "nats-server")
		builds = append(builds, []string{"-o", natsServerBin, "github.com/nats-io/nats-server/v2"})
	}
	for _, args := range builds {
		cmd := exec.Command("go", append([]string{"build"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build %s: %w\n%s", strings.Join(args, " "), err, out)
		}
	}
	if _, err := os.Stat(natsServerBin); err != nil {
		return fmt.Errorf("nats-server binary %s (from %s): %w", natsServerBin, EnvNATSServer, err)
	}
	return nil
}

// suite holds the sizes and timings of one form of the suite.
type suite struct {
	name string
	// messages is how many distinct messages each fault's stream sends,
	// rate how many per second.
	messages, rate int
	// down is how long a killed stage, NATS or Postgres stays down; freeze
	// how long a stage stays stopped; cut how long the publisher cannot
	// reach NATS; terminate how long Postgres keeps ending the stages'
	// sessions.
	down, freeze, cut, terminate time.Duration
	// duplicates is the TELEMETRY stream's Nats-Msg-Id window; 0 keeps
	// the gateway's default (two minutes).
	duplicates time.Duration
	// recoverWithin bounds the wait for every row to be processed.
	recoverWithin time.Duration
	// settle is how long the suite waits, once recovered, for anything
	// late (a redelivery, a retried publish) before it checks.
	settle time.Duration
	// stageArgs are extra flags per stage. The long form keeps the
	// production defaults, so its recovery times are production's.
	stageArgs map[string][]string
}

// currentSuite returns the form EnvMode selects.
func currentSuite() suite {
	if os.Getenv(EnvMode) == "long" {
		return suite{
			name:     "long",
			messages: 3000, rate: 250,
			down: 5 * time.Second, freeze: 20 * time.Second, cut: 20 * time.Second, terminate: 20 * time.Second,
			recoverWithin: 5 * time.Minute,
			settle:        3 * time.Second,
		}
	}
	return suite{
		name:     "short",
		messages: 300, rate: 150,
		down: time.Second, freeze: 4 * time.Second, cut: 4 * time.Second, terminate: 3 * time.Second,
		duplicates:    2 * time.Second,
		recoverWithin: 60 * time.Second,
		settle:        time.Second,
		// Short timeouts so a redelivery or a publish retry comes within
		// seconds rather than the production minute.
		stageArgs: map[string][]string{
			"gateway":   {"--ack-wait", "5s", "--call-timeout", "3s"},
			"persister": {"--publish-timeout", "2s", "--publish-lease", "3s"},
			"publisher": {"--retry-every", "250ms", "--retry-max-backoff", "2s"},
		},
	}
}
