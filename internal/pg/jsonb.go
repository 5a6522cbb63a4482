package pg

import "strings"

// JSONB makes JSON text acceptable to a jsonb column. jsonb refuses the
// \u0000 escape, since Postgres text cannot hold NUL, so each one becomes
// \ufffd, the replacement character. Every other escape is kept as it is,
// an escaped backslash followed by "u0000" included, so a device's literal
// text is never altered. Text without \u0000 is returned unchanged without
// copying.
func JSONB(s string) string {
	if !strings.Contains(s, `\u0000`) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		if strings.HasPrefix(s[i:], `\u0000`) {
			b.WriteString(`\ufffd`)
			i += len(`\u0000`) - 1
			continue
		}
		// Any other escape: keep both bytes, so the second is never read as
		// the start of an escape.
		b.WriteString(s[i : i+2])
		i++
	}
	return b.String()
}
