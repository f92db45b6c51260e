package runtime

import "errors"

// malformedError marks an event that cannot be read at all (its payload does
// not decode, or its headers are unusable), as opposed to one that decodes
// but is refused by its own Validate or by the handler. Operators count the
// two apart: a malformed event points at the producer.
type malformedError struct{ err error }

func (e malformedError) Error() string { return e.err.Error() }
func (e malformedError) Unwrap() error { return e.err }

// Malformed marks err as a permanent error about an event that cannot be
// read. Malformed(nil) is nil.
func Malformed(err error) error {
	if err == nil {
		return nil
	}
	return Permanent(malformedError{err: err})
}

// IsMalformed reports whether err, or an error it wraps, was marked with Malformed.
func IsMalformed(err error) bool {
	var m malformedError
	return errors.As(err, &m)
}
