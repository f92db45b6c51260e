package ingress

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
)

// idempotencyKeyHeader names the header a client sends an order request's
// key in (draft-ietf-httpapi-idempotency-key-header): the same key with the
// same order, sent again after a lost answer, stores nothing new.
const idempotencyKeyHeader = "Idempotency-Key"

// maxIdempotencyKeyBytes bounds a key, as payment APIs do (Stripe's 255).
const maxIdempotencyKeyBytes = 255

// idempotencyKey reads the request's key: 1 to 255 characters of printable
// ASCII without spaces (a UUID, a quoted string as the draft writes it),
// compared byte for byte. A space or a comma would make two keys that a
// proxy joined into one line look like one key; a control byte or other
// bytes would be stored and shown as they are.
func idempotencyKey(h http.Header) (string, error) {
	values := h.Values(idempotencyKeyHeader)
	switch {
	case len(values) == 0:
		return "", nil
	case len(values) > 1:
		return "", fieldError{idempotencyKeyHeader, fmt.Sprintf("is sent %d times; send one key", len(values))}
	}
	key := values[0]
	if key == "" {
		return "", fieldError{idempotencyKeyHeader, "is empty; send a key of 1 to 255 characters, or no header"}
	}
	if len(key) > maxIdempotencyKeyBytes {
		return "", fieldError{idempotencyKeyHeader, fmt.Sprintf("must be at most %d characters, got %d bytes", maxIdempotencyKeyBytes, len(key))}
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c <= ' ' || c > '~' || c == ',' {
			return "", fieldError{idempotencyKeyHeader, fmt.Sprintf("holds byte 0x%02x at %d; a key is printable ASCII without spaces or commas", c, i)}
		}
	}
	return key, nil
}

// orderDigest is what tells the same order from another under one key: a
// SHA-256 of the order as decoded, so bodies that differ only in spacing or
// in the order of their fields are the same order. Each string goes in as
// its length and its bytes, so no two orders write the same bytes, and
// nothing in it depends on the Go release (a key is kept as long as its
// order: a digest that changed would refuse the same order sent again).
func orderDigest(req OrderRequest) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d:%s", len(req.CustomerEmail), req.CustomerEmail)
	for _, it := range req.Items {
		fmt.Fprintf(h, "%d:%s%d,%d;", len(it.SKU), it.SKU, it.Quantity, it.PriceCents)
	}
	return hex.EncodeToString(h.Sum(nil))
}
