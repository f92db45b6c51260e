package store

import (
	"strings"
	"testing"
)

// TestRedactMasksEveryPassword: a PostgreSQL password can sit in the user
// info or in a query parameter; neither may reach a log line or /readyz.
func TestRedactMasksEveryPassword(t *testing.T) {
	const secret = "s3cr3t-marker"
	tests := []struct{ name, url, keeps string }{
		{"user info", "postgres://app:" + secret + "@db:5432/eventfn", "app:xxxxx@db:5432/eventfn"},
		{"password parameter", "postgres://app@db/eventfn?sslmode=require&password=" + secret, "sslmode=require"},
		{"sslpassword parameter", "postgres://app@db/eventfn?sslpassword=" + secret + "&sslmode=verify-full", "sslmode=verify-full"},
		{"both, odd case", "postgres://app:" + secret + "@db/eventfn?PassWord=" + secret, "app:xxxxx@db/eventfn"},
		{"no password", "postgres://app@db/eventfn?sslmode=disable", "postgres://app@db/eventfn?sslmode=disable"},
		{"unparsable", "postgres://app:" + secret + "%zz@db/eventfn", "(unparsable URL)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := redact(tt.url)
			if strings.Contains(got, "s3cr3t") {
				t.Fatalf("redact(%q) = %q: the secret is still there", tt.url, got)
			}
			if !strings.Contains(got, tt.keeps) {
				t.Errorf("redact(%q) = %q, want it to keep %q", tt.url, got, tt.keeps)
			}
		})
	}
}
