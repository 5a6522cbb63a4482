package publisher

import "strings"

// Token makes s usable as one subject token: lower case, and every character
// other than a-z, 0-9, _ and - becomes -. An empty result is "unknown".
func Token(s string) string {
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' && c != '-' {
			b[i] = '-'
		}
	}
	if len(b) == 0 {
		return "unknown"
	}
	return string(b)
}

// AnalyticsSubject is where processed telemetry is published:
// iot.v1.analytics.<env>.<org>.<device uuid>.<topic>.
func AnalyticsSubject(env, org, device, topic string) string {
	return "iot.v1.analytics." + Token(env) + "." + Token(org) + "." + Token(device) + "." + Token(topic)
}

// InvalidSubject is where invalid telemetry of active devices is published:
// iot.v1.invalid.<env>.<org>.<reason>.
func InvalidSubject(env, org, reason string) string {
	return "iot.v1.invalid." + Token(env) + "." + Token(org) + "." + Token(reason)
}
