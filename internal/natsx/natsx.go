// Package natsx connects to NATS the way every telemesh process does:
// reconnecting forever, with its name and its errors in the log.
package natsx

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
)

// ErrAuth is the cause of a connection the server refused for its
// credentials: wrong, expired or revoked, or none given where some are
// required. Retrying does not help; the settings must change.
var ErrAuth = errors.New("credentials refused")

// Auth holds the ways a process may authenticate; at most one of
// user/password, token, NKey seed file and creds file is used.
type Auth struct {
	User, Password string
	Token          string
	NKeyFile       string
	CredsFile      string
}

// Method names the way auth authenticates by the flag that selects it:
// nats-creds-file, nats-nkey-file, nats-token, nats-password, or "" for
// none. Connect uses the first that is set, in that order.
func (a Auth) Method() string {
	switch {
	case a.CredsFile != "":
		return "nats-creds-file"
	case a.NKeyFile != "":
		return "nats-nkey-file"
	case a.Token != "":
		return "nats-token"
	case a.User != "":
		return "nats-password"
	}
	return ""
}

// Options returns the nats.go options that authenticate with auth.
func (a Auth) Options() ([]nats.Option, error) {
	switch a.Method() {
	case "nats-creds-file":
		return []nats.Option{nats.UserCredentials(a.CredsFile)}, nil
	case "nats-nkey-file":
		o, err := nats.NkeyOptionFromSeed(a.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("nkey %s: %w", a.NKeyFile, err)
		}
		return []nats.Option{o}, nil
	case "nats-token":
		return []nats.Option{nats.Token(a.Token)}, nil
	case "nats-password":
		return []nats.Option{nats.UserInfo(a.User, a.Password)}, nil
	}
	return nil, nil
}

// IsAuthError reports whether err is the server refusing the credentials.
func IsAuthError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired)
}

// Connect connects to url (one or more comma-separated servers). A server
// that cannot be reached yet is retried in the background, so a stage may
// start before NATS; a server that refuses the credentials is an error
// wrapping [ErrAuth], returned at once.
func Connect(url, name string, auth Auth, logger *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectBufSize(64 << 20),
		nats.Timeout(5 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { logger.Info("nats reconnected", "server", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { logger.Warn("nats error", "err", err) }),
		nats.ClosedHandler(func(c *nats.Conn) {
			// Besides Close, only refused credentials close a connection
			// that reconnects forever, e.g. a user revoked while running.
			if err := c.LastError(); IsAuthError(err) {
				logger.Error("nats closed the connection: credentials refused; not reconnecting", "err", err)
			}
		}),
	}
	authOpts, err := auth.Options()
	if err != nil {
		return nil, fmt.Errorf("connect nats: %w", err)
	}
	opts = append(opts, authOpts...)
	// The first attempt tells refused credentials from a server that is not
	// up yet; only the latter is worth retrying.
	nc, err := nats.Connect(url, opts...)
	if err == nil {
		return nc, nil
	}
	if IsAuthError(err) {
		return nil, fmt.Errorf("connect nats: %w: %w", ErrAuth, err)
	}
	logger.Warn("nats not reachable yet; retrying in the background", "err", err)
	nc, err = nats.Connect(url, append(opts, nats.RetryOnFailedConnect(true))...)
	if err != nil {
		return nil, fmt.Errorf("connect nats: %w", err)
	}
	return nc, nil
}
