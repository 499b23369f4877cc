package health

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestStatusJSON(t *testing.T) {
	for _, tc := range []struct {
		s    Status
		json string
		exit int
	}{
		{OK, `"ok"`, 0},
		{Warning, `"warning"`, 1},
		{Error, `"error"`, 2},
	} {
		b, err := json.Marshal(tc.s)
		if err != nil || string(b) != tc.json {
			t.Errorf("Marshal(%v) = %s, %v; want %s", tc.s, b, err, tc.json)
		}
		var back Status
		if err := json.Unmarshal(b, &back); err != nil || back != tc.s {
			t.Errorf("Unmarshal(%s) = %v, %v", b, back, err)
		}
		if got := tc.s.ExitCode(); got != tc.exit {
			t.Errorf("%v.ExitCode() = %d, want %d", tc.s, got, tc.exit)
		}
	}
	for _, bad := range []string{`"fine"`, `1`, `""`, `null`} {
		var s Status
		if err := json.Unmarshal([]byte(bad), &s); err == nil {
			t.Errorf("Unmarshal(%s) = %v, want an error", bad, s)
		}
	}
	if _, err := json.Marshal(Status(7)); err == nil {
		t.Error("Marshal(Status(7)) succeeded")
	}
}

func result(s Status, msg string) func(context.Context) Result {
	return func(context.Context) Result { return Result{Status: s, Message: msg} }
}

func TestRunner(t *testing.T) {
	block := func(ctx context.Context) Result {
		<-ctx.Done()
		return Result{Status: Error, Message: ctx.Err().Error()}
	}
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	ignore := func(context.Context) Result { <-release; return Result{Status: OK} }
	for _, tc := range []struct {
		name   string
		checks []Check
		want   Status
		// msgs: a substring of each check's message, by name.
		msgs map[string]string
	}{
		{name: "none", want: OK},
		{name: "all ok", checks: []Check{{"b", result(OK, "fine")}, {"a", result(OK, "fine too")}}, want: OK,
			msgs: map[string]string{"a": "fine too", "b": "fine"}},
		{name: "worst is warning", checks: []Check{{"a", result(OK, "")}, {"b", result(Warning, "hm")}}, want: Warning},
		{name: "worst is error", checks: []Check{{"a", result(Error, "bad")}, {"b", result(Warning, "hm")}}, want: Error},
		{name: "timeout", checks: []Check{{"slow", block}, {"fast", result(OK, "")}}, want: Error,
			msgs: map[string]string{"slow": "timed out after"}},
		{name: "ignores its context", checks: []Check{{"stuck", ignore}}, want: Error,
			msgs: map[string]string{"stuck": "timed out after"}},
		{name: "panics", checks: []Check{{"p", func(context.Context) Result { panic("boom") }}}, want: Error,
			msgs: map[string]string{"p": "boom"}},
		{name: "nil func", checks: []Check{{Name: "n"}}, want: Error},
		{name: "invalid status", checks: []Check{{"i", result(Status(9), "x")}}, want: Error,
			msgs: map[string]string{"i": "invalid status"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Runner{Checks: tc.checks, Timeout: 50 * time.Millisecond, Node: "n1"}
			rep := r.Run(context.Background())
			if rep.Status != tc.want {
				t.Errorf("status %v, want %v: %+v", rep.Status, tc.want, rep)
			}
			if rep.Node != "n1" || rep.Time.IsZero() {
				t.Errorf("node %q time %v", rep.Node, rep.Time)
			}
			if len(rep.Checks) != len(tc.checks) {
				t.Fatalf("%d results for %d checks", len(rep.Checks), len(tc.checks))
			}
			for i := 1; i < len(rep.Checks); i++ {
				if rep.Checks[i-1].Name > rep.Checks[i].Name {
					t.Errorf("checks not sorted: %v", rep.Checks)
				}
			}
			for name, sub := range tc.msgs {
				c, ok := rep.Check(name)
				if !ok || !strings.Contains(c.Message, sub) {
					t.Errorf("check %s: %+v, want a message with %q", name, c, sub)
				}
			}
		})
	}
}

func TestRunnerCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := &Runner{Checks: []Check{{"a", func(ctx context.Context) Result {
		<-ctx.Done()
		return Result{Status: Error, Message: ctx.Err().Error()}
	}}}}
	rep := r.Run(ctx)
	if c, _ := rep.Check("a"); c.Status != Error || strings.Contains(c.Message, "timed out") {
		t.Fatalf("a cancelled run is not a timeout: %+v", c)
	}
}

func TestReportJSON(t *testing.T) {
	r := &Runner{Checks: []Check{{"a", func(context.Context) Result {
		return Result{Status: Warning, Message: "m", Details: map[string]any{"n": 3}}
	}}}}
	b, err := json.Marshal(r.Run(context.Background()))
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if back.Status != Warning || len(back.Checks) != 1 || back.Checks[0].Name != "a" || back.Checks[0].Status != Warning ||
		back.Checks[0].Details["n"] != float64(3) {
		t.Fatalf("round trip: %s -> %+v", b, back)
	}
	if !strings.Contains(string(b), `"status":"warning"`) {
		t.Fatalf("status not by name: %s", b)
	}
}
