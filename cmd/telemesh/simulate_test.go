package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/demo"
	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/testutil"
)

// natsWithStream starts NATS with a stream capturing the demo subjects, as
// the gateway creates it, and returns the URL and the stream.
func natsWithStream(t *testing.T) (string, jetstream.Stream) {
	t.Helper()
	ns := testnats.New(t)
	_, js := ns.Connect(t)
	st, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "TELEMETRY", Subjects: demo.Subjects})
	if err != nil {
		t.Fatal(err)
	}
	return ns.URL(), st
}

// runCmd runs telemesh in-process with the given environment.
func runCmd(t *testing.T, environ map[string]string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newRootCmd(env{stdout: &out, stderr: &errOut, lookupEnv: func(k string) (string, bool) {
		v, ok := environ[k]
		return v, ok
	}})
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(t.Context())
	return out.String(), errOut.String(), err
}

func TestSimulateSendsAndSummarizes(t *testing.T) {
	url, st := natsWithStream(t)
	stdout, stderr, err := runCmd(t, map[string]string{"TELEMESH_NATS_URL": url, "TELEMESH_COUNT": "60"},
		"simulate", "--rate", "0", "--invalid-pct", "10", "--duplicate-pct", "10", "--malformed-pct", "5", "--seed", "4")
	if err != nil {
		t.Fatalf("simulate: %v\nstderr:\n%s", err, stderr)
	}
	t.Logf("stdout:\n%s\nstderr:\n%s", stdout, stderr)
	for _, want := range []string{"KIND", "valid", "invalid", "duplicate", "malformed_json", "missing_inputs", "JetStream acked 60, failed 0"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("summary lacks %q", want)
		}
	}
	if !strings.Contains(stdout, "\ntotal           60\n") {
		t.Errorf("summary has no total of 60")
	}
	// Not a terminal: no carriage returns, and the final line shows a full bar.
	if strings.Contains(stderr, "\r") || !strings.Contains(stderr, "[########################] 100% 60/60  acked 60  failed 0") {
		t.Errorf("progress on a non-terminal stderr:\n%q", stderr)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs == 0 || info.State.Msgs > 60 {
		t.Errorf("stream holds %d messages after sending 60", info.State.Msgs)
	}
}

func TestSimulateNotesAnInactiveShareWithoutInactiveDevices(t *testing.T) {
	url, _ := natsWithStream(t)
	// The first two demo devices are both active.
	stdout, stderr, err := runCmd(t, nil, "simulate", "--nats-url", url, "--devices", "2", "--count", "20", "--rate", "0", "--inactive-pct", "50")
	if err != nil {
		t.Fatalf("simulate: %v", err)
	}
	if !strings.Contains(stderr, "note: none of the 2 devices is inactive") {
		t.Errorf("no note about the missing inactive device:\n%s", stderr)
	}
	if !strings.Contains(stdout, "SKIPPED") || !strings.Contains(stdout, "inactive (no inactive device among those used)") {
		t.Errorf("summary does not count the skipped inactive messages:\n%s", stdout)
	}
}

func TestSimulateBadSettings(t *testing.T) {
	tests := []struct {
		name    string
		environ map[string]string
		args    []string
		want    string
	}{
		{"percentage above 100", nil, []string{"--invalid-pct", "101"}, "--invalid-pct (TELEMESH_INVALID_PCT): 101 is out of range 0..100"},
		{"negative percentage", nil, []string{"--missing-inputs-pct", "-1"}, "--missing-inputs-pct"},
		{"NaN percentage", nil, []string{"--unknown-topic-pct", "NaN"}, "--unknown-topic-pct"},
		{"percentages above 100 together", nil, []string{"--invalid-pct", "60", "--malformed-pct", "50"}, "--malformed-pct (TELEMESH_MALFORMED_PCT): the fault percentages add up to 110"},
		{"no devices", nil, []string{"--devices", "0"}, "--devices"},
		{"more devices than the demo fleet", nil, []string{"--devices", "99"}, "--devices"},
		{"negative rate from the environment", map[string]string{"TELEMESH_RATE": "-1"}, nil, "--rate (TELEMESH_RATE)"},
		{"NaN rate", nil, []string{"--rate", "NaN"}, "--rate"},
		{"negative count", nil, []string{"--count", "-5"}, "--count"},
		{"negative duration", nil, []string{"--duration", "-1s"}, "--duration"},
		{"unparsable duration from the environment", map[string]string{"TELEMESH_DURATION": "soon"}, nil, "--duration (TELEMESH_DURATION)"},
		{"empty NATS URL", nil, []string{"--nats-url", ""}, "--nats-url"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runCmd(t, tc.environ, append([]string{"simulate"}, tc.args...)...)
			if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want an invalid setting containing %q", err, tc.want)
			}
		})
	}
}

func TestSimulateUnreachableNATSMasksTheURL(t *testing.T) {
	_, _, err := runCmd(t, nil, "simulate", "--nats-url", "nats://app:hunter2@127.0.0.1:1", "--count", "1")
	if err == nil || errors.Is(err, config.ErrInvalid) {
		t.Fatalf("err = %v, want a connection error (exit 1)", err)
	}
	if strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "connect to NATS at nats://app:xxxxx@127.0.0.1:1") {
		t.Fatalf("err = %v, want the URL with its password masked", err)
	}
}

func TestSimulateStopsOnInterrupt(t *testing.T) {
	url, st := natsWithStream(t)
	cmd := exec.CommandContext(t.Context(), telemeshBin, "simulate", "--rate", "100")
	cmd.Env = append(os.Environ(), "TELEMESH_NATS_URL="+url)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Interrupt once it has sent something, however long a busy machine
	// takes to start it.
	testutil.Eventually(t, testWait, "the simulator sends", func() error {
		info, err := st.Info(t.Context())
		if err != nil {
			return err
		}
		if info.State.Msgs == 0 {
			return errors.New("nothing in the stream yet")
		}
		return nil
	})
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGINT: %v\nstderr:\n%s", err, stderr.String())
		}
	case <-time.After(testWait):
		t.Fatalf("still running %s after SIGINT:\n%s", testWait, stderr.String())
	}
	out := stdout.String()
	if !strings.Contains(out, "KIND") || !strings.Contains(out, "Interrupted before the run's end.") || strings.Contains(out, "\ntotal           0\n") {
		t.Fatalf("no summary of a run that sent something after Ctrl-C:\n%s", out)
	}
	if !strings.Contains(out, "failed 0") {
		t.Errorf("messages failed around the interrupt:\n%s", out)
	}
}
