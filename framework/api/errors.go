package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"syscall"

	"github.com/ovs-storage/ovs/scos/asd"
	"github.com/ovs-storage/ovs/scos/ec"
	"github.com/ovs-storage/ovs/volumedriver"
)

// Error codes in the "code" field of an error response.
const (
	CodeNotFound         = "not_found"          // 404: no vdisk (or snapshot) by that name
	CodeAlreadyExists    = "already_exists"     // 409: the vdisk or snapshot name is taken
	CodeInvalidArgument  = "invalid_argument"   // 400: bad request body, size, name, or a shrink
	CodeBusy             = "busy"               // 409: the vdisk is in use, or a snapshot has clones
	CodeReadOnly         = "read_only"          // 409: a write, snapshot or rollback on a template
	CodeClosed           = "closed"             // 503: the volume was stopped or deleted meanwhile
	CodeOutOfRange       = "out_of_range"       // 400: beyond the end of the vdisk
	CodeUnknownRoute     = "unknown_route"      // 404: no such API endpoint
	CodeMethodNotAllowed = "method_not_allowed" // 405: endpoint exists, method does not
	CodeTooLarge         = "request_too_large"  // 413: request body over the limit
	CodeUnavailable      = "unavailable"        // 503: the server is not ready
	CodeCanceled         = "canceled"           // 503: the request was canceled
	CodeTimeout          = "timeout"            // 504: the operation timed out
	CodeInternal         = "internal"           // 500: anything else

	// CodeInsufficientStorage: a local disk of the node is full (ENOSPC,
	// EDQUOT); the operation can be retried once space is freed.
	CodeInsufficientStorage = "insufficient_storage" // 507
	// CodeBackendUnavailable: the backend cannot store or serve the
	// data now (too few ASDs up to place a preset's fragments).
	CodeBackendUnavailable = "backend_unavailable" // 503
	// CodeUnsupportedMediaType: a request with a body (or any mutating
	// request) that is not Content-Type application/json.
	CodeUnsupportedMediaType = "unsupported_media_type" // 415
	// CodeForbidden: a Host or Origin the API does not serve (browsers,
	// DNS rebinding).
	CodeForbidden = "forbidden" // 403
	// CodeUnauthorized: a mutating call without a valid API token.
	CodeUnauthorized = "unauthorized" // 401
	// CodeTooManyConnections: the API is at its connection limit.
	CodeTooManyConnections = "too_many_connections" // 503
)

// ErrorResponse is the JSON body of every non-2xx response.
type ErrorResponse struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// APIError is the error the Client returns for a non-2xx response.
//
// errors.Is(err, volumedriver.ErrNotFound) (and ErrExists,
// ErrInvalidArgument, ErrBusy, ErrReadOnly, ErrClosed, ErrOutOfRange) holds
// when the server answered with the matching code.
type APIError struct {
	Status  int    // HTTP status code
	Code    string // one of the Code* constants, "" if the server sent none
	Message string // the server's message
}

func (e *APIError) Error() string {
	if e.Message != "" {
		return e.Message
	}
	return fmt.Sprintf("HTTP %d %s", e.Status, http.StatusText(e.Status))
}

// Is reports whether the error's code corresponds to target, one of the
// volumedriver sentinel errors.
func (e *APIError) Is(target error) bool {
	s, ok := codeSentinels[e.Code]
	return ok && s == target
}

var codeSentinels = map[string]error{
	CodeNotFound:        volumedriver.ErrNotFound,
	CodeAlreadyExists:   volumedriver.ErrExists,
	CodeInvalidArgument: volumedriver.ErrInvalidArgument,
	CodeBusy:            volumedriver.ErrBusy,
	CodeReadOnly:        volumedriver.ErrReadOnly,
	CodeClosed:          volumedriver.ErrClosed,
	CodeOutOfRange:      volumedriver.ErrOutOfRange,
}

// httpError is an error the server itself raises (bad body, bad query),
// with the status and code to answer with.
type httpError struct {
	status int
	code   string
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(format string, args ...any) *httpError {
	return &httpError{http.StatusBadRequest, CodeInvalidArgument, fmt.Sprintf(format, args...)}
}

// classify maps an error to the HTTP status and code to answer with.
func classify(err error) (status int, code string) {
	var he *httpError
	switch {
	case errors.As(err, &he):
		return he.status, he.code
	case errors.Is(err, volumedriver.ErrReadOnly): // before the others, in case it wraps one
		return http.StatusConflict, CodeReadOnly
	case errors.Is(err, volumedriver.ErrNotFound):
		return http.StatusNotFound, CodeNotFound
	case errors.Is(err, volumedriver.ErrExists):
		return http.StatusConflict, CodeAlreadyExists
	case errors.Is(err, volumedriver.ErrInvalidArgument):
		return http.StatusBadRequest, CodeInvalidArgument
	case errors.Is(err, volumedriver.ErrBusy):
		return http.StatusConflict, CodeBusy
	case errors.Is(err, volumedriver.ErrClosed):
		return http.StatusServiceUnavailable, CodeClosed
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable, CodeUnavailable
	case errors.Is(err, volumedriver.ErrOutOfRange): // matches ENOSPC too: before it
		return http.StatusBadRequest, CodeOutOfRange
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return http.StatusInsufficientStorage, CodeInsufficientStorage
	case errors.Is(err, ec.ErrInsufficientASDs), errors.Is(err, ec.ErrObjectUnavailable),
		errors.Is(err, asd.ErrUnavailable):
		return http.StatusServiceUnavailable, CodeBackendUnavailable
	case errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable, CodeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, CodeTimeout
	}
	return http.StatusInternalServerError, CodeInternal
}

// errorMessage is the message for err about vdisk name. The driver's
// errors normally say which vdisk they are about; a bare sentinel gets the
// name added.
func errorMessage(err error, name string) string {
	if name == "" {
		return err.Error()
	}
	switch err {
	case volumedriver.ErrNotFound:
		return fmt.Sprintf("vdisk %q not found", name)
	case volumedriver.ErrExists:
		return fmt.Sprintf("vdisk %q already exists", name)
	case volumedriver.ErrBusy:
		return fmt.Sprintf("vdisk %q is in use", name)
	case volumedriver.ErrClosed:
		return fmt.Sprintf("vdisk %q is closed", name)
	case volumedriver.ErrInvalidArgument:
		return fmt.Sprintf("invalid argument for vdisk %q", name)
	case volumedriver.ErrReadOnly:
		return fmt.Sprintf("vdisk %q is a read-only template", name)
	case volumedriver.ErrSnapshotNotFound:
		return fmt.Sprintf("snapshot of vdisk %q not found", name)
	}
	return err.Error()
}

// snapshotError gives a bare sentinel from an operation on snapshot snap of
// vdisk name a message that names the snapshot. That is done for
// ErrSnapshotNotFound, and for the sentinels in also, which are about the
// snapshot only for some operations (ErrExists when creating a snapshot,
// ErrBusy when deleting one). Other errors pass as they are: the driver's
// errors say what they are about.
func snapshotError(err error, name, snap string, also ...error) error {
	if snap == "" || (err != volumedriver.ErrSnapshotNotFound && !slices.Contains(also, err)) {
		return err
	}
	var what string
	switch err {
	case volumedriver.ErrSnapshotNotFound, volumedriver.ErrNotFound:
		what = "not found"
	case volumedriver.ErrExists:
		what = "already exists"
	case volumedriver.ErrBusy:
		what = "is in use: clones depend on it"
	default:
		return err
	}
	return &sentinelError{fmt.Sprintf("snapshot %q of vdisk %q %s", snap, name, what), err}
}

// sentinelError is a sentinel error with a better message.
type sentinelError struct {
	msg string
	err error
}

func (e *sentinelError) Error() string { return e.msg }
func (e *sentinelError) Unwrap() error { return e.err }
