// Package natsx connects to NATS the way every telemesh process does:
// reconnecting forever, with its name and its errors in the log.
package natsx

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
)

// Auth holds the ways a process may authenticate; at most one of
// user/password, token, NKey seed file and creds file is used.
type Auth struct {
	User, Password string
	Token          string
	NKeyFile       string
	CredsFile      string
}

// Connect connects to url (one or more comma-separated servers).
func Connect(url, name string, auth Auth, logger *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectBufSize(64 << 20),
		nats.Timeout(5 * time.Second),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { logger.Info("nats reconnected", "server", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { logger.Warn("nats error", "err", err) }),
	}
	switch {
	case auth.CredsFile != "":
		opts = append(opts, nats.UserCredentials(auth.CredsFile))
	case auth.NKeyFile != "":
		o, err := nats.NkeyOptionFromSeed(auth.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("nkey %s: %w", auth.NKeyFile, err)
		}
		opts = append(opts, o)
	case auth.Token != "":
		opts = append(opts, nats.Token(auth.Token))
	case auth.User != "":
		opts = append(opts, nats.UserInfo(auth.User, auth.Password))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect nats: %w", err)
	}
	return nc, nil
}
