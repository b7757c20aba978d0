package api

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/danielgtaylor/huma/v2"

	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// Problem is an RFC 9457 problem document with the wire protocol's error
// code: a client handles "forbidden" or "rejected" the same way over HTTP
// as in an ERR frame. Rule names the order rule a "rejected" broke.
type Problem struct {
	huma.ErrorModel
	Code string `json:"code" doc:"The wire protocol's error code: unauthorized, forbidden, not_found, bad_request, rejected, rate_limited, too_large, store_full, unavailable, internal."`
	Rule string `json:"rule,omitempty" doc:"For code rejected: the order rule that was broken (e.g. not-cancellable, idempotency-mismatch)."`
	// retryAfter, in seconds, becomes a Retry-After header.
	retryAfter int
}

// GetHeaders gives huma the headers of the response (Retry-After).
func (p *Problem) GetHeaders() http.Header {
	if p.retryAfter <= 0 {
		return nil
	}
	return http.Header{"Retry-After": []string{strconv.Itoa(p.retryAfter)}}
}

// problemType is the problem's type URI: one per wire code.
func problemType(code string) string { return "urn:caps:error:" + code }

func newProblem(status int, code, detail string) *Problem {
	return &Problem{ErrorModel: huma.ErrorModel{Type: problemType(code), Title: http.StatusText(status), Status: status, Detail: detail}, Code: code}
}

// codeForStatus is the wire code of an error huma itself raises (a body
// that does not validate, one too large).
func codeForStatus(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return protocol.CodeAuth
	case http.StatusForbidden:
		return protocol.CodeForbidden
	case http.StatusNotFound:
		return protocol.CodeNotFound
	case http.StatusRequestEntityTooLarge:
		return protocol.CodeTooLarge
	case http.StatusTooManyRequests:
		return protocol.CodeRateLimited
	case http.StatusServiceUnavailable:
		return protocol.CodeUnavailable
	}
	if status >= 500 {
		return protocol.CodeInternal
	}
	return protocol.CodeBadRequest
}

// huma builds every error it raises with huma.NewError; this package's
// makes them Problems with a code. It is set once, when the package is
// loaded, and never changes (huma offers no per-API setting for it).
func init() {
	huma.NewError = func(status int, msg string, errs ...error) huma.StatusError {
		p := newProblem(status, codeForStatus(status), msg)
		for _, e := range errs {
			if e != nil {
				p.Add(e)
			}
		}
		return p
	}
}

// problemOf turns an error of the dispatcher (a *protocol.Error with the
// wire code, a refusal's rule in its text) into a problem.
func problemOf(err error) *Problem {
	var p *Problem
	if errors.As(err, &p) {
		return p
	}
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		return newProblem(http.StatusInternalServerError, protocol.CodeInternal, err.Error())
	}
	switch pe.Code {
	case protocol.CodeRejected:
		rule := parcel.Rule(err)
		p = newProblem(statusOfRule(rule), pe.Code, pe.Text)
		p.Rule = rule
		return p
	case protocol.CodeNotFound:
		return newProblem(http.StatusNotFound, pe.Code, pe.Text)
	case protocol.CodeForbidden:
		return newProblem(http.StatusForbidden, pe.Code, pe.Text)
	case protocol.CodeAuth:
		return newProblem(http.StatusUnauthorized, pe.Code, pe.Text)
	case protocol.CodeBadRequest:
		return newProblem(http.StatusBadRequest, pe.Code, pe.Text)
	case protocol.CodeStoreFull, protocol.CodeUnavailable:
		p = newProblem(http.StatusServiceUnavailable, pe.Code, pe.Text)
		p.retryAfter = 5
		return p
	}
	return newProblem(http.StatusInternalServerError, pe.Code, pe.Text)
}

// statusOfRule is the HTTP status of a broken order rule: 422 for what the
// request said, 409 for what the order's state does not allow.
func statusOfRule(rule string) int {
	switch rule {
	case parcel.RuleDuplicate, parcel.RuleOutOfOrder, parcel.RuleNotCancellable, parcel.RuleNotHolder,
		parcel.RuleWrongStore, parcel.RuleMismatch:
		return http.StatusConflict
	case parcel.RuleNoSuchOrder:
		return http.StatusNotFound
	}
	return http.StatusUnprocessableEntity
}
