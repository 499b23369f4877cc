// Package health runs the health checks of an OVS cluster (what `ovs
// health` and GET /api/v1/health/checks report): arakoon quorum, ASDs,
// degraded objects, write-buffer pressure, DTL states, node heartbeats and
// clock skew. Each check reads what it needs through a small interface
// defined here, so that it can be tested with fakes; the node adapts its
// arakoon client, backend, volume driver and model to them.
//
// A Runner runs the checks concurrently, each under its own timeout, and
// returns a Report: the checks sorted by name and the worst status.
package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Status is the outcome of a check, ordered from best to worst.
type Status int

// The statuses, best first: Worst compares them as numbers.
const (
	OK Status = iota
	Warning
	Error
)

var statusNames = [...]string{OK: "ok", Warning: "warning", Error: "error"}

// String returns "ok", "warning" or "error".
func (s Status) String() string {
	if s < OK || s > Error {
		return fmt.Sprintf("status(%d)", int(s))
	}
	return statusNames[s]
}

// ParseStatus reads "ok", "warning" or "error".
func ParseStatus(text string) (Status, error) {
	for s, name := range statusNames {
		if text == name {
			return Status(s), nil
		}
	}
	return 0, fmt.Errorf("unknown health status %q (want ok, warning or error)", text)
}

// MarshalJSON writes the status as its name.
func (s Status) MarshalJSON() ([]byte, error) {
	if s < OK || s > Error {
		return nil, fmt.Errorf("health: cannot encode %s", s)
	}
	return json.Marshal(s.String())
}

// UnmarshalJSON reads a status name.
func (s *Status) UnmarshalJSON(data []byte) error {
	var text string
	if err := json.Unmarshal(data, &text); err != nil {
		return fmt.Errorf("health status: %w", err)
	}
	v, err := ParseStatus(text)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// ExitCode is the exit code `ovs health` uses for s: 0 ok, 1 warning, 2
// error (as monitoring plugins do).
func (s Status) ExitCode() int {
	switch s {
	case OK:
		return 0
	case Warning:
		return 1
	}
	return 2
}

// Worst returns the worst of statuses (OK for none).
func Worst(statuses ...Status) Status {
	w := OK
	for _, s := range statuses {
		w = max(w, s)
	}
	return w
}

// Result is what one check found.
type Result struct {
	Status Status `json:"status"`
	// Message is one line for a human: what is wrong, or what is fine.
	Message string `json:"message"`
	// Details are the figures behind the message, for scripts (the
	// down ASDs, the skew per node, ...).
	Details map[string]any `json:"details,omitempty"`
}

// Check is one named health check. Run must return when ctx is done; a
// check that does not is reported as timed out all the same.
type Check struct {
	Name string
	Run  func(ctx context.Context) Result
}

// CheckResult is a check's result in a Report.
type CheckResult struct {
	Name string `json:"name"`
	Result
	// Took is how long the check ran, in milliseconds.
	TookMS int64 `json:"took_ms"`
}

// Report is the outcome of a run of the checks.
type Report struct {
	// Status is the worst status of the checks.
	Status Status `json:"status"`
	// Node is the node that ran the checks; Time when it ran them.
	Node   string        `json:"node,omitempty"`
	Time   time.Time     `json:"time"`
	Checks []CheckResult `json:"checks"`
}

// Check returns the result of check name, if the report has it.
func (r Report) Check(name string) (CheckResult, bool) {
	for _, c := range r.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return CheckResult{}, false
}

// DefaultTimeout bounds one check unless the Runner says otherwise.
const DefaultTimeout = 10 * time.Second

// Runner runs a set of checks.
type Runner struct {
	Checks []Check
	// Timeout bounds each check (default DefaultTimeout). A check still
	// running then is an error with that message.
	Timeout time.Duration
	// Node names the node that runs the checks in the report.
	Node string
}

// Run runs every check concurrently and returns the report. It returns
// once every check has returned or timed out, or ctx is done (the checks
// not finished by then are errors).
func (r *Runner) Run(ctx context.Context) Report {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	rep := Report{Node: r.Node, Time: time.Now().UTC(), Checks: make([]CheckResult, len(r.Checks))}
	var wg sync.WaitGroup
	for i, c := range r.Checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep.Checks[i] = runOne(ctx, c, timeout)
		}()
	}
	wg.Wait()
	slices.SortStableFunc(rep.Checks, func(a, b CheckResult) int { return strings.Compare(a.Name, b.Name) })
	for _, c := range rep.Checks {
		rep.Status = Worst(rep.Status, c.Status)
	}
	return rep
}

// runOne runs c under timeout. The check runs in its own goroutine so that
// one that ignores its context cannot hold the report up: it is left to
// finish on its own (its result is dropped).
func runOne(ctx context.Context, c Check, timeout time.Duration) CheckResult {
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	done := make(chan Result, 1)
	go func() {
		defer func() {
			// A check's bug must not take the API down with it.
			if p := recover(); p != nil {
				done <- Result{Status: Error, Message: fmt.Sprintf("the check failed: %v", p)}
			}
		}()
		if c.Run == nil {
			done <- Result{Status: Error, Message: "the check has nothing to run"}
			return
		}
		done <- c.Run(cctx)
	}()
	var res Result
	select {
	case res = <-done:
	case <-cctx.Done():
		select {
		case res = <-done: // it made it after all
		default:
			if ctx.Err() != nil {
				res = Result{Status: Error, Message: fmt.Sprintf("not finished: %v", ctx.Err())}
			} else {
				res = Result{Status: Error, Message: fmt.Sprintf("timed out after %s", timeout)}
			}
		}
	}
	// A check that failed because its time ran out says so, whatever its
	// own message made of the context's error.
	if res.Status == Error && ctx.Err() == nil && errors.Is(cctx.Err(), context.DeadlineExceeded) &&
		!strings.HasPrefix(res.Message, "timed out") {
		res.Message = fmt.Sprintf("timed out after %s: %s", timeout, res.Message)
	}
	if res.Status < OK || res.Status > Error {
		res = Result{Status: Error, Message: fmt.Sprintf("the check returned an invalid status %d: %s", int(res.Status), res.Message)}
	}
	return CheckResult{Name: c.Name, Result: res, TookMS: time.Since(start).Milliseconds()}
}
