// Package config reads settings from command-line flags and TELEMESH_*
// environment variables, validates them and prints them with secrets masked.
//
// A flag set on the command line wins over the environment; the environment
// wins over the default. Every setting has one flag name, and its variable is
// TELEMESH_ followed by the flag name in upper case with - turned into _.
//
// A secret (a password, a token, a URL that may carry one) also has a
// --<name>-file flag, TELEMESH_<NAME>_FILE, that reads it from a file: a
// command line is visible to every user of the machine (ps, /proc) and to
// anything that reports it, so the environment or a file is the way to give
// a secret, and the flag itself is the last resort.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
)

// EnvPrefix is the prefix of every environment variable telemesh reads.
const EnvPrefix = "TELEMESH_"

// secretAnnotation marks a flag whose value must never be printed.
const secretAnnotation = "telemesh_secret"

// appliedAnnotation marks a flag that [ApplyEnv] set from the environment
// or a file rather than the command line, so that a second ApplyEnv on the
// same flags sees the same sources as the first.
const appliedAnnotation = "telemesh_applied"

// ErrInvalid is the cause of every [Error]: a setting whose value cannot be used.
var ErrInvalid = errors.New("invalid setting")

// Error names the setting that stopped start-up and says why.
type Error struct {
	// Flag is the flag name without dashes.
	Flag string
	// Reason says what is wrong, without the secret part of the value.
	Reason string
}

// Error returns one line naming both the flag and its environment variable.
func (e *Error) Error() string {
	return fmt.Sprintf("invalid setting --%s (%s): %s", e.Flag, EnvName(e.Flag), e.Reason)
}

// Unwrap lets errors.Is(err, ErrInvalid) hold for every Error.
func (e *Error) Unwrap() error { return ErrInvalid }

// EnvName returns the environment variable that feeds the flag.
func EnvName(flag string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// fileSuffix ends the name of the flag that reads a secret from a file.
const fileSuffix = "-file"

// MarkSecret marks flags whose values are masked when printed. URL-valued
// secrets keep everything but their password; other values are masked whole.
//
// Each gets a companion --<name>-file flag (TELEMESH_<NAME>_FILE) that
// [ApplyEnv] reads the secret from, and its help says that the flag itself
// is the last resort.
func MarkSecret(fs *pflag.FlagSet, names ...string) {
	for _, n := range names {
		f := fs.Lookup(n)
		if f == nil {
			panic("config: MarkSecret of unknown flag " + n)
		}
		_ = fs.SetAnnotation(n, secretAnnotation, []string{"true"})
		if fs.Lookup(n+fileSuffix) != nil {
			continue
		}
		f.Usage += fmt.Sprintf("; a secret on the command line is the last resort (other users of the machine can read it): prefer %s or --%s%s",
			EnvName(n), n, fileSuffix)
		fs.String(n+fileSuffix, "", fmt.Sprintf("file holding --%s, read once at start; a trailing newline is dropped (%s)",
			n, EnvName(n+fileSuffix)))
	}
}

// ApplyEnv sets every flag that was not given on the command line from its
// environment variable, if that variable is set, then reads the secrets
// given by file (see [MarkSecret]). lookup is usually os.LookupEnv; it is a
// parameter so that tests and embedders need not touch the process
// environment.
//
// A secret given on the command line, as a value or a file, wins over the
// environment; giving both its value and its file at the same level is an
// error, since either choice would surprise someone.
func ApplyEnv(fs *pflag.FlagSet, lookup func(string) (string, bool)) error {
	// Which secrets the command line gave, before the environment fills in
	// the rest.
	onCommandLine := map[string]bool{}
	fs.VisitAll(func(f *pflag.Flag) {
		_, applied := f.Annotations[appliedAnnotation]
		onCommandLine[f.Name] = f.Changed && !applied
	})
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		v, ok := lookup(EnvName(f.Name))
		if !ok {
			return
		}
		if setErr := fs.Set(f.Name, v); setErr != nil {
			err = &Error{Flag: f.Name, Reason: fmt.Sprintf("cannot parse %q as %s", display(f, v), f.Value.Type())}
			return
		}
		_ = fs.SetAnnotation(f.Name, appliedAnnotation, []string{"env"})
	})
	if err != nil {
		return err
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil {
			return
		}
		if _, secret := f.Annotations[secretAnnotation]; secret {
			err = readSecretFile(fs, f, onCommandLine, lookup)
		}
	})
	return err
}

// readSecretFile sets the secret flag f from its companion file, if one was
// given and the secret was not given more directly.
func readSecretFile(fs *pflag.FlagSet, f *pflag.Flag, onCommandLine map[string]bool, lookup func(string) (string, bool)) error {
	file := fs.Lookup(f.Name + fileSuffix)
	if file == nil || file.Value.String() == "" {
		return nil
	}
	fileName := file.Name
	switch {
	case onCommandLine[f.Name] && onCommandLine[fileName]:
		return &Error{Flag: fileName, Reason: fmt.Sprintf("give --%s or --%s, not both", f.Name, fileName)}
	case onCommandLine[f.Name]:
		// The value on the command line wins over a file named in the
		// environment.
		return nil
	case !onCommandLine[fileName]:
		// The file is named in the environment, so the value must not be
		// there too.
		if v, ok := lookup(EnvName(f.Name)); ok && v != "" {
			return &Error{Flag: fileName, Reason: fmt.Sprintf("give %s or %s, not both", EnvName(f.Name), EnvName(fileName))}
		}
	}
	b, err := os.ReadFile(file.Value.String())
	if err != nil {
		return &Error{Flag: fileName, Reason: fmt.Sprintf("cannot read: %v", unwrapPathError(err))}
	}
	v := strings.TrimRight(string(b), "\r\n")
	if v == "" {
		return &Error{Flag: fileName, Reason: fmt.Sprintf("the file is empty: %s", file.Value.String())}
	}
	if err := fs.Set(f.Name, v); err != nil {
		return &Error{Flag: fileName, Reason: fmt.Sprintf("cannot parse the file's content as %s", f.Value.Type())}
	}
	_ = fs.SetAnnotation(f.Name, appliedAnnotation, []string{"file"})
	return nil
}

// unwrapPathError turns "open /x: no such file or directory" into a phrase
// that names the file once.
func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}

// Print logs every setting once, secrets masked, sorted by name.
func Print(logger *slog.Logger, msg string, fs *pflag.FlagSet) {
	var attrs []any
	var flags []*pflag.Flag
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" {
			return
		}
		flags = append(flags, f)
	})
	sort.Slice(flags, func(i, j int) bool { return flags[i].Name < flags[j].Name })
	for _, f := range flags {
		attrs = append(attrs, slog.String(f.Name, display(f, f.Value.String())))
	}
	logger.Info(msg, attrs...)
}

func display(f *pflag.Flag, v string) string {
	if _, secret := f.Annotations[secretAnnotation]; !secret || v == "" {
		return v
	}
	return MaskURL(v)
}

// MaskURL hides the password of a URL (or the whole value when it is not a
// URL with a scheme), so it can be logged.
func MaskURL(v string) string {
	var out []string
	// A NATS URL may list several servers separated by commas.
	for _, part := range strings.Split(v, ",") {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil || u.Scheme == "" || u.Host == "" {
			out = append(out, "*****")
			continue
		}
		if u.User != nil {
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
			} else if strings.HasPrefix(u.Scheme, "nats") || u.Scheme == "tls" || u.Scheme == "ws" || u.Scheme == "wss" {
				// A bare user part in a NATS URL is a token; in a Postgres
				// URL it is only the user name.
				u.User = url.User("xxxxx")
			}
		}
		q := u.Query()
		for k := range q {
			if lk := strings.ToLower(k); strings.Contains(lk, "password") || strings.Contains(lk, "token") || strings.Contains(lk, "secret") {
				q.Set(k, "xxxxx")
			}
		}
		u.RawQuery = q.Encode()
		out = append(out, u.Redacted())
	}
	return strings.Join(out, ",")
}

// CheckListenAddr reports whether v is a host:port a server can listen on:
// the port is a number from 0 to 65535 (0 picks a free one).
func CheckListenAddr(flag, v string) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return &Error{Flag: flag, Reason: fmt.Sprintf("%q is not host:port", v)}
	}
	if host != "" && strings.ContainsAny(host, " /") {
		return &Error{Flag: flag, Reason: fmt.Sprintf("%q has an invalid host", v)}
	}
	return checkPort(flag, v, port)
}

// CheckTarget reports whether v is a gRPC target telemesh can dial:
// host:port, dns:///host:port, or a comma-separated list of host:port
// replicas; ports from 1 to 65535.
func CheckTarget(flag, v string) error {
	if parts := strings.Split(v, ","); len(parts) > 1 {
		for _, p := range parts {
			if strings.HasPrefix(p, "dns:") {
				return &Error{Flag: flag, Reason: fmt.Sprintf("%q: a list holds host:port addresses only", v)}
			}
			if err := CheckTarget(flag, strings.TrimSpace(p)); err != nil {
				return err
			}
		}
		return nil
	}
	addr := v
	if rest, ok := strings.CutPrefix(v, "dns:///"); ok {
		addr = rest
	} else if strings.Contains(v, "://") {
		return &Error{Flag: flag, Reason: fmt.Sprintf("%q: only host:port and dns:///host:port targets are supported", v)}
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return &Error{Flag: flag, Reason: fmt.Sprintf("%q is not host:port or dns:///host:port", v)}
	}
	if port == "0" {
		return &Error{Flag: flag, Reason: fmt.Sprintf("%q: port must be from 1 to 65535", v)}
	}
	return checkPort(flag, v, port)
}

func checkPort(flag, v, port string) error {
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return &Error{Flag: flag, Reason: fmt.Sprintf("%q: port %s is out of range 0-65535", v, port)}
	}
	return nil
}

// CheckOneOf reports whether v is one of the allowed values.
func CheckOneOf(flag, v string, allowed ...string) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return &Error{Flag: flag, Reason: fmt.Sprintf("%q is not one of %s", v, strings.Join(allowed, ", "))}
}

// Invalid returns an [Error] for a flag with the given reason.
func Invalid(flag, format string, args ...any) error {
	return &Error{Flag: flag, Reason: fmt.Sprintf(format, args...)}
}

// ListVar defines a flag holding a comma-separated list in p, whose value
// is the flag's default. Spaces around the items are dropped, and empty
// items; a flag given twice keeps the last list.
func ListVar(fs *pflag.FlagSet, p *[]string, name, usage string) {
	fs.Var((*listValue)(p), name, usage)
}

// listValue is a list flag's value, shown as its items joined by commas.
type listValue []string

func (l *listValue) String() string { return strings.Join(*l, ",") }

func (l *listValue) Set(s string) error {
	*l = splitList(s)
	return nil
}

// Type is "string", as the list is written on the command line.
func (l *listValue) Type() string { return "string" }

// splitList returns the items of a comma-separated list, spaces around
// them dropped, without empty ones.
func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
