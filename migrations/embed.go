// Package migrations holds telemesh's database schema as plain SQL goose
// migrations, embedded in the binary so `telemesh migrate up` and the test
// helpers need no files on disk.
//
// Files are numbered 00001_..., 00002_...; each has a `-- +goose Up` and a
// `-- +goose Down` section, and every Down fully undoes its Up, so migrating
// down to version 0 leaves nothing but goose's own version table.
package migrations

import "embed"

// FS holds every migration file (*.sql) at its root, ready for
// goose.NewProvider.
//
//go:embed *.sql
var FS embed.FS
