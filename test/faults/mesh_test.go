package faults_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Stage names, in chain order.
const (
	gateway   = "gateway"
	validator = "validator"
	deriver   = "deriver"
	persister = "persister"
	publisher = "publisher"
)

var stages = []string{gateway, validator, deriver, persister, publisher}

// meshConfig says how to run one fault's mesh.
type meshConfig struct {
	databaseURL string
	natsURL     string
	// publisherNATS, if set, is the NATS URL of the publisher alone (a
	// proxy the fault cuts).
	publisherNATS string
	// args are extra flags per stage.
	args map[string][]string
}

// stageProc is one running stage and how to start it again.
type stageProc struct {
	name string
	args []string
	// addr is its gRPC address; a restart listens on it again, so the
	// stage calling it needs no change.
	addr string
	// admin is its admin HTTP address (a restart picks a new one).
	admin string
	p     *proc
}

// mesh is every stage running as its own `telemesh serve <stage>` process.
type mesh struct {
	stages map[string]*stageProc
}

// startMesh starts the stages downstream first (publisher, persister,
// deriver, validator, gateway), each told its next hop's address, and
// returns once all serve. They are killed when the test ends.
func startMesh(t testing.TB, cfg meshConfig) *mesh {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("the suite's binaries could not be built: %v", buildErr)
	}
	m := &mesh{stages: map[string]*stageProc{}}
	for i := len(stages) - 1; i >= 0; i-- {
		name := stages[i]
		args := []string{"serve", name, "--admin-listen", "127.0.0.1:0", "--log-format", "json",
			"--database-url", cfg.databaseURL, "--shutdown-grace", "5s", "--instance", "faults-" + name}
		switch name {
		case gateway:
			args = append(args, "--nats-url", cfg.natsURL, "--subjects", "devices.>,energy.>",
				"--validator-addr", m.stages[validator].addr)
		case validator:
			args = append(args, "--deriver-addr", m.stages[deriver].addr, "--persister-addr", m.stages[persister].addr)
		case deriver:
			args = append(args, "--persister-addr", m.stages[persister].addr)
		case persister:
			args = append(args, "--publisher-addr", m.stages[publisher].addr)
		case publisher:
			u := cfg.natsURL
			if cfg.publisherNATS != "" {
				u = cfg.publisherNATS
			}
			args = append(args, "--nats-url", u)
		}
		s := &stageProc{name: name, args: append(args, cfg.args[name]...)}
		s.start(t, "127.0.0.1:0")
		m.stages[name] = s
	}
	return m
}

// start runs the stage listening on listen and waits until it serves.
func (s *stageProc) start(t testing.TB, listen string) {
	t.Helper()
	s.p = startProc(t, s.name, telemeshBin, append(s.args, "--listen", listen)...)
	line, ok := s.p.waitLine(func(l string) bool { return strings.Contains(l, `"msg":"serving"`) }, startWait)
	if !ok {
		t.Fatalf("%s not serving within %s:\n%s", s.name, startWait, s.p.output())
	}
	var rec struct {
		GRPC  string `json:"grpc"`
		Admin string `json:"admin"`
	}
	if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.GRPC == "" || rec.Admin == "" {
		t.Fatalf("%s: cannot read its addresses from %q: %v", s.name, line, err)
	}
	s.addr, s.admin = rec.GRPC, rec.Admin
}

// callMetric matches the gRPC call counters of telemesh's own services on
// the admin port's /metrics.
var callMetric = regexp.MustCompile(`(?m)^grpc_(server|client)_(started|handled)_total\{([^}]*grpc_service="telemesh\.[^}]*)\} (\d+)$`)

// inFlight returns how many calls of telemesh's services the stage is in
// the middle of: calls it serves, or for the gateway, which serves none
// from the chain, calls it makes to the validator.
func (s *stageProc) inFlight() (int, error) {
	resp, err := http.Get("http://" + s.admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	side := "server"
	if s.name == gateway {
		side = "client"
	}
	n := 0
	for _, m := range callMetric.FindAllSubmatch(body, -1) {
		if string(m[1]) != side {
			continue
		}
		v, _ := strconv.Atoi(string(m[4]))
		if string(m[2]) == "started" {
			n += v
		} else {
			n -= v
		}
	}
	return n, nil
}

// waitBusy waits until the stage is in the middle of a batch, so a kill
// lands mid-batch rather than between two. It returns how many calls were
// in flight.
func (m *mesh) waitBusy(t testing.TB, name string) int {
	t.Helper()
	s := m.stages[name]
	// No pause between looks: a batch can be over in milliseconds.
	deadline := time.Now().Add(startWait)
	for time.Now().Before(deadline) {
		n, err := s.inFlight()
		if err == nil && n > 0 {
			return n
		}
	}
	t.Fatalf("%s never had a call in flight within %s", name, startWait)
	return 0
}

// kill ends the stage with SIGKILL: no graceful stop, nothing flushed.
func (m *mesh) kill(t testing.TB, name string) {
	t.Helper()
	s := m.stages[name]
	s.p.signal(t, syscall.SIGKILL)
	<-s.p.done
}

// stop ends the stage with SIGTERM, as a rolling deploy does, and waits
// for its graceful exit; a stage still running after its shutdown grace
// and a margin fails the test.
func (m *mesh) stop(t testing.TB, name string) {
	t.Helper()
	s := m.stages[name]
	s.p.signal(t, syscall.SIGTERM)
	select {
	case <-s.p.done:
	case <-time.After(stopWait):
		s.p.kill()
		t.Fatalf("%s still running %s after SIGTERM:\n%s", name, stopWait, s.p.output())
	}
}

// stopWait bounds a stage's graceful exit: its --shutdown-grace (5 s) and
// a margin for a busy machine.
const stopWait = 30 * time.Second

// restart starts a stopped or killed stage again on its address.
func (m *mesh) restart(t testing.TB, name string) {
	t.Helper()
	s := m.stages[name]
	s.start(t, s.addr)
}

// freeze stops the stage with SIGSTOP; it holds its connections and
// answers nothing until thaw.
func (m *mesh) freeze(t testing.TB, name string) {
	t.Helper()
	m.stages[name].p.signal(t, syscall.SIGSTOP)
}

// thaw resumes a frozen stage with SIGCONT.
func (m *mesh) thaw(t testing.TB, name string) {
	t.Helper()
	m.stages[name].p.signal(t, syscall.SIGCONT)
}

// exited names stages that ended on their own, with their output.
func (m *mesh) exited() []string {
	var out []string
	for _, name := range stages {
		if s := m.stages[name]; s.p.exited() {
			out = append(out, fmt.Sprintf("%s exited (%v):\n%s", name, s.p.exitErr(), s.p.output()))
		}
	}
	return out
}

// logs returns the end of every stage's output, for a failure message.
func (m *mesh) logs() string {
	var b strings.Builder
	for _, name := range stages {
		b.WriteString("==== " + name + "\n" + m.stages[name].p.output() + "\n")
	}
	return b.String()
}
