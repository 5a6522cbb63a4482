package pg

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

// Refused reports whether Postgres refused a write for what the rows held:
// a data exception (class 22: a value out of range, text a column cannot
// take), an integrity constraint (class 23) or a program limit (class 54,
// such as an index entry too large). Writing the same rows again fails
// again, while the other rows of their batch succeed on their own. Any other
// failure (a lost connection, a timeout, a missing grant) is not the rows'
// doing.
func Refused(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) < 2 {
		return false
	}
	switch pgErr.Code[:2] {
	case "22", "23", "54":
		return true
	}
	return false
}

// Reason returns what Postgres said of a refused write, as one line for an
// operator: its message without the SQLSTATE and the context it was
// wrapped in. Other errors are returned as they read.
func Reason(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Message
	}
	return err.Error()
}
