// Command telemesh serves one stage of the telemesh ingestion pipeline, runs
// the whole mesh locally, and operates it.
//
// Only this package handles signals and exit codes; everything below takes a
// context.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/ops"
)

// version, commit and date are set at link time (-ldflags "-X
// main.version=... -X main.commit=... -X main.date=...", as the Makefile
// does); what is left empty comes from the toolchain's build record.
var (
	version = "dev"
	commit  string
	date    string
)

func main() {
	os.Exit(run())
}

func run() int {
	app.TuneRuntime()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := newRootCmd(env{stdout: os.Stdout, stderr: os.Stderr, lookupEnv: os.LookupEnv})
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "telemesh: %v\n", err)
		var coded *exitCodeError
		if errors.As(err, &coded) {
			return coded.code
		}
		if errors.Is(err, config.ErrInvalid) || errors.Is(err, errUsage) || errors.Is(err, ops.ErrBadInput) {
			return 2
		}
		return 1
	}
	return 0
}

// exitCodeError is returned by a command whose outcome has its own exit code
// (doctor's verdicts), beyond run's 0 success, 1 failure and 2 bad usage (a
// setting, a command line or an argument that cannot be used).
type exitCodeError struct {
	code int
	err  error
}

func (e *exitCodeError) Error() string { return e.err.Error() }

func (e *exitCodeError) Unwrap() error { return e.err }
