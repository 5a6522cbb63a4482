// Package tracing sets up OpenTelemetry tracing for a stage from the standard
// OTEL_* variables, and starts and ends the spans of the messages a stage
// handles, so one message reads as one trace across the batches it travels
// in. Without an OTLP endpoint tracing is off: a no-op provider, no stats
// handlers, no span per message.
package tracing

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// ErrConfig is an OTEL_* setting that cannot be used.
var ErrConfig = errors.New("tracing setting")

// DefaultRatio is the share of traces sampled when an endpoint is set and
// OTEL_TRACES_SAMPLER_ARG is not: enough to see where the time goes, little
// enough to cost nothing at full rate. Failed messages are kept whatever the
// ratio.
const DefaultRatio = 0.01

// Config is what the OTEL_* variables say about tracing.
type Config struct {
	// Endpoint is the OTLP/gRPC receiver's URL (http://collector:4317);
	// empty turns tracing off.
	Endpoint string
	// Sampler is an OTEL_TRACES_SAMPLER value: always_on, always_off,
	// traceidratio, parentbased_always_on, parentbased_always_off or
	// parentbased_traceidratio (the default).
	Sampler string
	// Ratio is the sampled share of the ratio samplers.
	Ratio float64
	// ServiceName, if set (OTEL_SERVICE_NAME), replaces telemesh-<stage>.
	ServiceName string
	// Attributes are OTEL_RESOURCE_ATTRIBUTES, key=value pairs.
	Attributes map[string]string
}

// Redacted returns an endpoint URL without the user information it may
// carry, for a log line.
func Redacted(endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "(unparsable)"
	}
	u.User = nil
	return u.String()
}

// Enabled reports whether spans are exported.
func (c Config) Enabled() bool { return c.Endpoint != "" }

// samplers lists the OTEL_TRACES_SAMPLER values understood.
var samplers = []string{"always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"}

// ConfigFromEnv reads the standard variables through lookup: the endpoint
// (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT), the
// protocol (grpc, the one built in), the sampler and its argument, the
// service name and resource attributes; OTEL_SDK_DISABLED=true or
// OTEL_TRACES_EXPORTER=none turn tracing off. The exporter reads the
// remaining OTEL_EXPORTER_OTLP_* variables (headers, certificate, timeout,
// compression) itself.
func ConfigFromEnv(lookup func(string) (string, bool)) (Config, error) {
	get := func(k string) string {
		v, _ := lookup(k)
		return strings.TrimSpace(v)
	}
	c := Config{Sampler: "parentbased_traceidratio", Ratio: DefaultRatio}
	if strings.EqualFold(get("OTEL_SDK_DISABLED"), "true") {
		return c, nil
	}
	switch exp := get("OTEL_TRACES_EXPORTER"); exp {
	case "", "otlp":
	case "none":
		return c, nil
	default:
		return c, fmt.Errorf("%w: OTEL_TRACES_EXPORTER=%q: want otlp or none", ErrConfig, exp)
	}
	c.Endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	if c.Endpoint == "" {
		c.Endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT")
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return c, fmt.Errorf("%w: OTLP endpoint %q: want http://host:port or https://host:port", ErrConfig, c.Endpoint)
		}
	}
	proto := get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		proto = get("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	if proto != "" && proto != "grpc" {
		return c, fmt.Errorf("%w: OTLP protocol %q: telemesh exports traces over grpc only", ErrConfig, proto)
	}
	if s := get("OTEL_TRACES_SAMPLER"); s != "" {
		ok := false
		for _, known := range samplers {
			ok = ok || s == known
		}
		if !ok {
			return c, fmt.Errorf("%w: OTEL_TRACES_SAMPLER=%q: want one of %s", ErrConfig, s, strings.Join(samplers, ", "))
		}
		c.Sampler = s
	}
	if arg := get("OTEL_TRACES_SAMPLER_ARG"); arg != "" && strings.HasSuffix(c.Sampler, "traceidratio") {
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || r < 0 || r > 1 {
			return c, fmt.Errorf("%w: OTEL_TRACES_SAMPLER_ARG=%q: want a ratio from 0 to 1", ErrConfig, arg)
		}
		c.Ratio = r
	}
	c.ServiceName = get("OTEL_SERVICE_NAME")
	if attrs := get("OTEL_RESOURCE_ATTRIBUTES"); attrs != "" {
		c.Attributes = map[string]string{}
		for _, kv := range strings.Split(attrs, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || strings.TrimSpace(k) == "" {
				return c, fmt.Errorf("%w: OTEL_RESOURCE_ATTRIBUTES: %q is not key=value", ErrConfig, kv)
			}
			if uv, err := url.QueryUnescape(strings.TrimSpace(v)); err == nil {
				v = uv
			}
			c.Attributes[strings.TrimSpace(k)] = v
		}
	}
	return c, nil
}
