package webhook

import (
	"errors"
	"fmt"

	"github.com/caps-hub/caps/protocol"
)

// Error codes of the errors the Go API returns. They are the wire
// protocol's codes where one fits, so an HTTP API maps them like the rest.
const (
	CodeBadRequest  = protocol.CodeBadRequest  // a malformed URL, store or filter
	CodeNotFound    = protocol.CodeNotFound    // no such endpoint in this store
	CodeUnavailable = protocol.CodeUnavailable // the engine did not answer; retry later
	CodeTooMany     = "too_many_webhooks"      // an endpoint cap is reached
)

// Error is an error with a code; every refusal of the Go API is one.
type Error struct {
	Code string
	Msg  string
}

func (e *Error) Error() string { return e.Code + ": " + e.Msg }

// ErrorCode returns err's code, or "" when err is not an *Error.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

func badRequest(format string, args ...any) error {
	return &Error{Code: CodeBadRequest, Msg: fmt.Sprintf(format, args...)}
}

func notFound(store, id string) error {
	return &Error{Code: CodeNotFound, Msg: fmt.Sprintf("no webhook endpoint %q in store %q", id, store)}
}

func tooMany(format string, args ...any) error {
	return &Error{Code: CodeTooMany, Msg: fmt.Sprintf(format, args...)}
}

// unavailable wraps an engine failure: the caller may retry.
func unavailable(what string, err error) error {
	return fmt.Errorf("%w: %w", &Error{Code: CodeUnavailable, Msg: what}, err)
}
