// Package charttest tests the deployment files of telemesh: the Helm chart
// in deploy/helm/telemesh (rendered with the Helm SDK, decoded strictly into
// Kubernetes API types, linted) and the Tiltfile at the repository root
// (executed by go.starlark.net with Tilt's builtins stubbed).
//
// It is a module of its own so that Helm, the Kubernetes API types and
// Starlark stay out of the production module's dependencies.
package charttest
