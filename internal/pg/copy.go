package pg

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrCopyValue is returned by [CopyRows.Send] when a value has no binary
// COPY form: a time whose microseconds since 2000 do not fit in 64 bits,
// or a value longer than a field's 32-bit length.
var ErrCopyValue = errors.New("value cannot be copied")

// CopyRows builds the rows of one COPY in PostgreSQL's binary format, a
// row at a time: [CopyRows.Row] starts a row, and one typed method per
// column, in the order of the columns, writes its value; [CopyRows.Send]
// copies them. Each method writes the value's binary wire form as pgx
// would for the Go value it takes, without pgx's per-value lookup of an
// encode plan and boxing of the value in an interface, which cost the
// stages more CPU than any other part of a write.
//
// The methods write what they are given without knowing the column's type:
// a value of the wrong width (an Int32 for a bigint column) is refused by
// Postgres, not converted.
type CopyRows struct {
	table   pgx.Identifier
	columns []string
	// buf holds the rows from the COPY header on; box is the pooled slice
	// it came from, nil until the first row.
	buf  []byte
	box  *[]byte
	rows int64
	// fields counts the values of the current row, so a row with one too
	// few or too many is caught here rather than read by Postgres as
	// shifted columns.
	fields int
	err    error
}

// copyHeader starts binary COPY data: the signature, flags with no OIDs,
// and an empty header extension.
const copyHeader = "PGCOPY\n\377\r\n\000" + "\x00\x00\x00\x00" + "\x00\x00\x00\x00"

// copyBufs keeps COPY buffers for the next batch: a stage writes a batch
// of a few MB every few milliseconds, and growing a new buffer to that
// size each time costs more than the encoding.
var copyBufs = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledCopyBuf bounds the buffers kept: one grown by an unusually
// large batch is left to the collector.
const maxPooledCopyBuf = 16 << 20

// NewCopyRows returns an empty COPY of columns of table.
func NewCopyRows(table pgx.Identifier, columns []string) *CopyRows {
	return &CopyRows{table: table, columns: columns}
}

// Row starts a row. Each row takes exactly one value per column.
func (c *CopyRows) Row() {
	if c.box == nil {
		c.box = copyBufs.Get().(*[]byte)
		c.buf = append((*c.box)[:0], copyHeader...)
	}
	c.endRow()
	c.rows++
	c.fields = 0
	c.buf = binary.BigEndian.AppendUint16(c.buf, uint16(len(c.columns)))
}

// endRow checks the row being written has a value for every column, and
// that no value came before the first row.
func (c *CopyRows) endRow() {
	switch {
	case c.err != nil:
	case c.rows == 0 && c.fields > 0:
		c.err = fmt.Errorf("%d values before the first row", c.fields)
	case c.rows > 0 && c.fields != len(c.columns):
		c.err = fmt.Errorf("row %d has %d values for %d columns", c.rows, c.fields, len(c.columns))
	}
}

// field starts a value of n bytes.
func (c *CopyRows) field(n int) {
	c.fields++
	c.buf = binary.BigEndian.AppendUint32(c.buf, uint32(n))
}

// unencodable records that a value has no binary COPY form and writes
// NULL in its place, so the row keeps its shape until Send fails.
func (c *CopyRows) unencodable(format string, args ...any) {
	if c.err == nil {
		c.err = fmt.Errorf("row %d: %s: %w", c.rows, fmt.Sprintf(format, args...), ErrCopyValue)
	}
	c.Null()
}

// Null writes NULL.
func (c *CopyRows) Null() {
	c.fields++
	c.buf = append(c.buf, 0xff, 0xff, 0xff, 0xff)
}

// UUID writes a uuid, its 16 bytes; the zero UUID is written as it is, not
// as NULL.
func (c *CopyRows) UUID(u [16]byte) {
	c.field(16)
	c.buf = append(c.buf, u[:]...)
}

// NullUUID writes a uuid, or NULL for the zero UUID.
func (c *CopyRows) NullUUID(u [16]byte) {
	if u == [16]byte{} {
		c.Null()
		return
	}
	c.UUID(u)
}

// Text writes a text, varchar or name value: its bytes, which Postgres
// checks are valid in its encoding (and refuses a NUL in).
func (c *CopyRows) Text(s string) {
	if len(s) > math.MaxInt32 {
		c.unencodable("text of %d bytes", len(s))
		return
	}
	c.field(len(s))
	c.buf = append(c.buf, s...)
}

// NullText writes a text value, or NULL for "".
func (c *CopyRows) NullText(s string) {
	if s == "" {
		c.Null()
		return
	}
	c.Text(s)
}

// JSONB writes a jsonb value: the format's version, 1, then the JSON text,
// which Postgres parses. The text is written as it is: make it acceptable
// with [JSONB] first.
func (c *CopyRows) JSONB(s string) {
	if len(s) >= math.MaxInt32 {
		c.unencodable("jsonb of %d bytes", len(s))
		return
	}
	c.field(len(s) + 1)
	c.buf = append(append(c.buf, 1), s...)
}

// NullJSONB writes a jsonb value, or NULL for "".
func (c *CopyRows) NullJSONB(s string) {
	if s == "" {
		c.Null()
		return
	}
	c.JSONB(s)
}

// JSONBBytes writes JSON text held in bytes as [CopyRows.JSONB] does, or
// NULL for a nil b, as pgx does.
func (c *CopyRows) JSONBBytes(b []byte) {
	if b == nil {
		c.Null()
		return
	}
	if len(b) >= math.MaxInt32 {
		c.unencodable("jsonb of %d bytes", len(b))
		return
	}
	c.field(len(b) + 1)
	c.buf = append(append(c.buf, 1), b...)
}

// Bytea writes a bytea value, or NULL for a nil b, as pgx does: an empty
// b that is not nil is the empty bytea.
func (c *CopyRows) Bytea(b []byte) {
	if b == nil {
		c.Null()
		return
	}
	if len(b) > math.MaxInt32 {
		c.unencodable("bytea of %d bytes", len(b))
		return
	}
	c.field(len(b))
	c.buf = append(c.buf, b...)
}

// Int64 writes a bigint (int8) value.
func (c *CopyRows) Int64(v int64) {
	c.field(8)
	c.buf = binary.BigEndian.AppendUint64(c.buf, uint64(v))
}

// Int32 writes an integer (int4) value.
func (c *CopyRows) Int32(v int32) {
	c.field(4)
	c.buf = binary.BigEndian.AppendUint32(c.buf, uint32(v))
}

// Int16 writes a smallint (int2) value.
func (c *CopyRows) Int16(v int16) {
	c.field(2)
	c.buf = binary.BigEndian.AppendUint16(c.buf, uint16(v))
}

// Bool writes a boolean value.
func (c *CopyRows) Bool(v bool) {
	c.field(1)
	if v {
		c.buf = append(c.buf, 1)
	} else {
		c.buf = append(c.buf, 0)
	}
}

// unixToY2K is the seconds from the Unix epoch to 2000-01-01 UTC, where
// Postgres counts its timestamps from.
const unixToY2K = 946_684_800

// Bounds of the seconds since 2000 whose microseconds, plus a fraction of
// a second, fit in an int64 and are neither of the two values Postgres
// reads as infinity (the int64 limits).
const (
	minY2KSeconds = math.MinInt64 / 1_000_000
	maxY2KSeconds = (math.MaxInt64 - 999_999) / 1_000_000
)

// Timestamptz writes a timestamptz: microseconds since 2000-01-01 UTC,
// the nanoseconds truncated, as pgx writes a time.Time (the zero time is
// 0001-01-01, not NULL). A time Postgres has no room for is refused by
// Postgres, as with pgx; one whose microseconds do not even fit in 64
// bits, which pgx would wrap around, fails [CopyRows.Send] with
// [ErrCopyValue].
func (c *CopyRows) Timestamptz(t time.Time) {
	s := t.Unix() - unixToY2K
	if s < minY2KSeconds || s > maxY2KSeconds {
		c.unencodable("timestamptz %s", t)
		return
	}
	c.field(8)
	us := s*1_000_000 + int64(t.Nanosecond()/1000)
	c.buf = binary.BigEndian.AppendUint64(c.buf, uint64(us))
}

// Send copies the rows in tx and returns how many were written. An error
// of the COPY is returned as pgconn gives it, so errors.As finds a
// *pgconn.PgError. An error of the rows themselves (a row without a value
// for each column, a value [ErrCopyValue] names) is returned without
// sending anything. Either way c is empty after, ready for other rows.
//
// The rows are encoded whole into one buffer before they are sent, rather
// than streamed as pgx does, through a pipe to pgconn's goroutine 64 KiB
// at a time: that hand-over costs two goroutine switches per chunk, while
// pgconn reads a buffer straight into its CopyData messages. The price is
// memory, a second copy of the batch's values while it is sent: a few MB
// for a batch of stage rows, and never more than the request the batch
// came in.
//
// It calls the COPY tracer of tx's connection (a [pgx.CopyFromTracer]
// set as its config's Tracer) as [pgx.Conn.CopyFrom] would, since going
// to pgconn bypasses it, so the write's span keeps its COPY child.
func (c *CopyRows) Send(ctx context.Context, tx pgx.Tx) (int64, error) {
	c.endRow()
	buf, box, err := c.buf, c.box, c.err
	c.buf, c.box, c.rows, c.fields, c.err = nil, nil, 0, 0, nil
	if err != nil || box == nil {
		return 0, err
	}
	buf = binary.BigEndian.AppendUint16(buf, 0xffff)

	conn := tx.Conn()
	tracer, _ := conn.Config().Tracer.(pgx.CopyFromTracer)
	if tracer != nil {
		ctx = tracer.TraceCopyFromStart(ctx, conn, pgx.TraceCopyFromStartData{TableName: c.table, ColumnNames: c.columns})
	}
	tag, err := conn.PgConn().CopyFrom(ctx, bytes.NewReader(buf), c.statement())
	if tracer != nil {
		tracer.TraceCopyFromEnd(ctx, conn, pgx.TraceCopyFromEndData{CommandTag: tag, Err: err})
	}
	if err != nil {
		// The buffer is not reused: on a broken connection pgconn returns
		// before its goroutine has stopped reading it.
		return tag.RowsAffected(), err
	}
	if cap(buf) <= maxPooledCopyBuf {
		*box = buf
		copyBufs.Put(box)
	}
	return tag.RowsAffected(), nil
}

// statement returns the COPY statement of the rows.
func (c *CopyRows) statement() string {
	var b strings.Builder
	b.WriteString("COPY ")
	b.WriteString(c.table.Sanitize())
	b.WriteString(" (")
	for i, col := range c.columns {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(pgx.Identifier{col}.Sanitize())
	}
	b.WriteString(") FROM STDIN (FORMAT binary)")
	return b.String()
}
