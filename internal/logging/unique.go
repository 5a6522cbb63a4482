package logging

import (
	"context"
	"log/slog"
	"slices"
)

// builtinKeys are the keys slog's handlers write on every line themselves.
var builtinKeys = []string{slog.TimeKey, slog.LevelKey, slog.MessageKey, slog.SourceKey}

// uniqueKeys is a handler that writes each key once per object. slog's own
// handlers write every attribute they are given, so a key set by
// [slog.Logger.With] and again at the call appears twice, and some log
// pipelines reject such a line. Here a key set again replaces the earlier
// value in its place (the last one wins, as for a reader that keeps the
// last), groups of the same name merge, and an attribute named like one of
// the fields every line carries (time, level, msg, source) is written as
// "attr.<name>" so it neither repeats nor hides the field.
//
// It keeps the attributes and groups of With and WithGroup itself and hands
// the wrapped handler whole records, because a pre-formatted attribute
// could not be replaced later.
type uniqueKeys struct {
	next slog.Handler
	// root holds the attributes added before the first group; groups the
	// open groups, each with the attributes added inside it.
	root   []slog.Attr
	groups []openGroup
}

// openGroup is a group opened by WithGroup and what was added inside it.
type openGroup struct {
	name  string
	attrs []slog.Attr
}

// newUniqueKeys wraps next, which must not have attributes or groups of its
// own.
func newUniqueKeys(next slog.Handler) *uniqueKeys { return &uniqueKeys{next: next} }

// Enabled reports whether the wrapped handler logs at level.
func (h *uniqueKeys) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

// WithAttrs returns a handler that adds attrs to every record, in the
// innermost open group.
func (h *uniqueKeys) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	c := h.clone()
	if n := len(c.groups); n > 0 {
		c.groups[n-1].attrs = append(slices.Clip(c.groups[n-1].attrs), attrs...)
	} else {
		c.root = append(slices.Clip(c.root), attrs...)
	}
	return c
}

// WithGroup returns a handler that puts what follows in the group name.
func (h *uniqueKeys) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := h.clone()
	c.groups = append(c.groups, openGroup{name: name})
	return c
}

// clone returns a copy that can be added to without changing h: the group
// list is copied, since WithAttrs replaces an element of it, and every
// attribute slice is appended to only past its length, into a new array.
func (h *uniqueKeys) clone() *uniqueKeys {
	return &uniqueKeys{next: h.next, root: h.root, groups: slices.Clone(h.groups)}
}

// Handle writes r with the handler's attributes and groups, each key once.
func (h *uniqueKeys) Handle(ctx context.Context, r slog.Record) error {
	attrs := make([]slog.Attr, 0, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool {
		attrs = append(attrs, a)
		return true
	})
	// From the innermost group out: each group's own attributes, then
	// what was added inside it.
	for i := len(h.groups) - 1; i >= 0; i-- {
		g := h.groups[i]
		inner := unique(append(slices.Clip(g.attrs), attrs...))
		attrs = []slog.Attr{{Key: g.name, Value: slog.GroupValue(inner...)}}
	}
	attrs = unique(append(slices.Clip(h.root), attrs...))
	renamed := false
	for i, a := range attrs {
		if slices.Contains(builtinKeys, a.Key) {
			attrs[i].Key = "attr." + a.Key
			renamed = true
		}
	}
	if renamed {
		// A renamed key may meet one that was already called so.
		attrs = unique(attrs)
	}
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	out.AddAttrs(attrs...)
	return h.next.Handle(ctx, out)
}

// unique returns attrs with each key once: values resolved, groups without
// a key inlined, empty attributes dropped, a repeated key's last value in
// the first one's place, and groups of one name merged.
func unique(attrs []slog.Attr) []slog.Attr {
	out := make([]slog.Attr, 0, len(attrs))
	var add func(a slog.Attr)
	add = func(a slog.Attr) {
		a.Value = a.Value.Resolve()
		if a.Equal(slog.Attr{}) {
			return
		}
		if a.Value.Kind() == slog.KindGroup {
			if a.Key == "" {
				for _, m := range a.Value.Group() {
					add(m)
				}
				return
			}
			members := unique(a.Value.Group())
			if len(members) == 0 {
				// slog's handlers write nothing for an empty group.
				return
			}
			a.Value = slog.GroupValue(members...)
		}
		i := slices.IndexFunc(out, func(b slog.Attr) bool { return b.Key == a.Key })
		switch {
		case i < 0:
			out = append(out, a)
		case out[i].Value.Kind() == slog.KindGroup && a.Value.Kind() == slog.KindGroup:
			merged := append(slices.Clip(out[i].Value.Group()), a.Value.Group()...)
			out[i].Value = slog.GroupValue(unique(merged)...)
		default:
			out[i] = a
		}
	}
	for _, a := range attrs {
		add(a)
	}
	return out
}
