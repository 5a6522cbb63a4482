// Package browsertest drives the Telemetry Viewer in a real headless
// Chromium (chromedp) against an in-process mesh, real Postgres and
// in-process NATS. It is a module of its own so that chromedp, a heavy
// test-only dependency, stays out of the production module.
package browsertest
