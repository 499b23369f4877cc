package health

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/scos/ec"
	"github.com/ovs-storage/ovs/volumedriver"
)

// expect runs c and checks its status and that its message holds every
// one of subs.
func expect(t *testing.T, c Check, want Status, subs ...string) Result {
	t.Helper()
	r := c.Run(context.Background())
	if r.Status != want {
		t.Errorf("%s: status %v, want %v: %s", c.Name, r.Status, want, r.Message)
	}
	for _, s := range subs {
		if !strings.Contains(r.Message, s) {
			t.Errorf("%s: message %q lacks %q", c.Name, r.Message, s)
		}
	}
	return r
}

type fakeArakoon struct {
	master    string
	masterErr error
	members   []ArakoonMember
	down      map[string]bool
}

func (f fakeArakoon) Master(context.Context) (string, error) { return f.master, f.masterErr }
func (f fakeArakoon) Members(context.Context) ([]ArakoonMember, error) {
	return f.members, nil
}
func (f fakeArakoon) Ping(ctx context.Context, id string) error {
	if f.down[id] {
		<-ctx.Done() // an unreachable member: the probe times out
		return ctx.Err()
	}
	return nil
}

func TestArakoonQuorum(t *testing.T) {
	three := []ArakoonMember{{"a", true}, {"b", true}, {"c", true}}
	for _, tc := range []struct {
		name string
		f    fakeArakoon
		want Status
		subs []string
	}{
		{"healthy", fakeArakoon{master: "a", members: three}, OK, []string{"leader a", "3 of 3"}},
		{"one node", fakeArakoon{master: "a", members: three[:1]}, OK, []string{"1 of 1"}},
		{"no leader", fakeArakoon{masterErr: errors.New("no master")}, Error, []string{"no leader", "no master"}},
		{"one down", fakeArakoon{master: "a", members: three, down: map[string]bool{"c": true}}, Warning, []string{"2 of 3", "unreachable: c"}},
		{"learner down", fakeArakoon{master: "a", members: append(three, ArakoonMember{"l", false}), down: map[string]bool{"l": true}},
			Warning, []string{"3 of 3", "unreachable: l"}},
		{"quorum lost", fakeArakoon{master: "a", members: three, down: map[string]bool{"b": true, "c": true}}, Error, []string{"no quorum", "1 of 3", "2 needed"}},
		{"no voters", fakeArakoon{master: "a", members: []ArakoonMember{{"l", false}}}, Error, []string{"no voting member"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expect(t, ArakoonQuorum(tc.f, 20*time.Millisecond), tc.want, tc.subs...)
		})
	}
}

type fakeBackend struct {
	asds     []ec.ASDStatus
	writable error
	status   ec.Status
	err      error
}

func (f fakeBackend) ListASDs(context.Context) ([]ec.ASDStatus, error) { return f.asds, f.err }
func (f fakeBackend) Writable(context.Context) error                   { return f.writable }
func (f fakeBackend) Status(context.Context) (ec.Status, error)        { return f.status, f.err }

func asds(health ...string) []ec.ASDStatus {
	out := make([]ec.ASDStatus, len(health))
	for i, h := range health {
		out[i] = ec.ASDStatus{ID: "asd-" + string(rune('a'+i)), State: ec.ASDActive, Health: h}
	}
	return out
}

func TestASDHealth(t *testing.T) {
	draining := asds("up", "up", "down")
	draining[2].State = "decommissioning"
	for _, tc := range []struct {
		name string
		f    fakeBackend
		want Status
		subs []string
	}{
		{"all up", fakeBackend{asds: asds("up", "up", "up")}, OK, []string{"3 of 3"}},
		{"one down", fakeBackend{asds: asds("up", "down", "up")}, Warning, []string{"2 of 3", "down: asd-b"}},
		{"not probed", fakeBackend{asds: asds("up", "unknown")}, Warning, []string{"not probed yet: asd-b"}},
		{"cannot write", fakeBackend{asds: asds("up", "down", "down"), writable: errors.New("insufficient ASDs")}, Error,
			[]string{"cannot take writes", "insufficient ASDs"}},
		{"decommissioning down is not a warning", fakeBackend{asds: draining}, OK, []string{"2 of 2"}},
		{"list fails", fakeBackend{err: errors.New("kv down")}, Error, []string{"kv down"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expect(t, ASDHealth(tc.f), tc.want, tc.subs...)
		})
	}
}

func TestDegradedObjects(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    fakeBackend
		want Status
		subs []string
	}{
		{"clean", fakeBackend{status: ec.Status{Objects: 10}}, OK, []string{"10 objects, none degraded"}},
		{"degraded", fakeBackend{status: ec.Status{Objects: 10, Degraded: 4, Flagged: 1}}, Warning, []string{"4 of 10", "1 flagged"}},
		{"repairing", fakeBackend{status: ec.Status{Objects: 10, Degraded: 4,
			Maintenance: ec.MaintenanceProgress{Task: "repair", Done: 2, Total: 4}}}, Warning, []string{"repair under way: 2 of 4"}},
		{"unavailable", fakeBackend{status: ec.Status{Objects: 10, Degraded: 4, Unavailable: 2}}, Error, []string{"2 of 10 objects cannot be read"}},
		{"status fails", fakeBackend{err: errors.New("kv down")}, Error, []string{"kv down"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expect(t, DegradedObjects(tc.f), tc.want, tc.subs...)
		})
	}
}

type fakeVDisks struct {
	infos []volumedriver.VolumeInfo
	err   error
}

func (f fakeVDisks) List(context.Context) ([]volumedriver.VolumeInfo, error) { return f.infos, f.err }

func TestWriteBuffer(t *testing.T) {
	const bound = 1000
	pending := func(p ...int64) fakeVDisks {
		var f fakeVDisks
		for i, b := range p {
			f.infos = append(f.infos, volumedriver.VolumeInfo{Name: "vd" + string(rune('a'+i)), PendingUploadBytes: b, WriteBufferBytes: 5000})
		}
		return f
	}
	for _, tc := range []struct {
		name string
		f    fakeVDisks
		want Status
		subs []string
	}{
		{"no vdisks", pending(), OK, []string{"0 vdisks"}},
		// A full write buffer of uploaded SCOs is a cache, not pressure.
		{"low", pending(10, 800), OK, []string{"highest fill 80%"}},
		{"warn", pending(10, 801), Warning, []string{"vdb 80%"}},
		{"error", pending(960, 801), Error, []string{"vda 96%", "vdb 80%"}},
		{"over the bound", pending(1500), Error, []string{"vda 150%"}},
		{"list fails", fakeVDisks{err: errors.New("no driver")}, Error, []string{"no driver"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expect(t, WriteBuffer(tc.f, bound), tc.want, tc.subs...)
		})
	}
	expect(t, WriteBuffer(pending(1), 0), Error, "no bound")
}

type nodeCount int

func (n nodeCount) NodeCount(context.Context) (int, error) { return int(n), nil }

func TestDTLStates(t *testing.T) {
	vd := func(states ...string) fakeVDisks {
		var f fakeVDisks
		for i, s := range states {
			in := volumedriver.VolumeInfo{Name: "vd" + string(rune('a'+i)), DTLState: s, State: "ok"}
			if s == "unreachable" {
				in.DTLState, in.State = "", "unreachable: connection refused"
			}
			if s == "creating" {
				in.DTLState, in.State = "", "creating"
			}
			f.infos = append(f.infos, in)
		}
		return f
	}
	for _, tc := range []struct {
		name  string
		f     fakeVDisks
		nodes int
		want  Status
		subs  []string
	}{
		{"all ok", vd("ok", "disabled", "ok"), 3, OK, []string{"3 vdisks"}},
		{"standalone alone", vd("standalone", "standalone"), 1, OK, []string{"2 standalone"}},
		{"standalone in a cluster", vd("standalone", "ok"), 3, Warning, []string{"1 of 2", "vda (standalone)"}},
		{"degraded", vd("ok", "degraded"), 2, Warning, []string{"vdb (degraded)"}},
		{"catching up", vd("catching_up"), 2, Warning, []string{"vda (catching_up)"}},
		{"owner unreachable", vd("ok", "unreachable"), 2, Warning, []string{"unknown for 1", "vdb"}},
		{"being created", vd("ok", "creating"), 2, OK, nil},
		{"list fails", fakeVDisks{err: errors.New("no model")}, 1, Error, []string{"no model"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expect(t, DTLStates(tc.f, nodeCount(tc.nodes)), tc.want, tc.subs...)
		})
	}
}

type fakeBeats []NodeBeat

func (f fakeBeats) Heartbeats(context.Context) ([]NodeBeat, error) { return f, nil }

func TestNodesAlive(t *testing.T) {
	alive := func(id string) NodeBeat { return NodeBeat{ID: id, Beat: true, Silent: time.Second} }
	for _, tc := range []struct {
		name string
		f    fakeBeats
		want Status
		subs []string
	}{
		{"all alive", fakeBeats{alive("n1"), alive("n2")}, OK, []string{"2 of 2"}},
		{"one silent", fakeBeats{alive("n1"), {ID: "n2", Beat: true, Silent: 30 * time.Second}}, Warning, []string{"1 of 2", "n2 (silent for 30s)"}},
		{"never beat", fakeBeats{alive("n1"), {ID: "n3"}}, Warning, []string{"n3 (no heartbeat ever)"}},
		{"none alive", fakeBeats{{ID: "n1", Beat: true, Silent: time.Minute}}, Error, []string{"no node sends heartbeats"}},
		{"no nodes", fakeBeats{}, Error, []string{"no node"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expect(t, NodesAlive(tc.f, 10*time.Second), tc.want, tc.subs...)
		})
	}
}

// fakeClocks answers for each peer its offset from the local clock, after
// a round trip of rtt (on the fake local clock).
type fakeClocks struct {
	clock   *fakeClock
	offsets map[string]time.Duration
	rtt     time.Duration
	down    map[string]bool
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func (f fakeClocks) Peers(context.Context) ([]string, error) {
	var out []string
	for p := range f.offsets {
		out = append(out, p)
	}
	for p := range f.down {
		out = append(out, p)
	}
	return out, nil
}

func (f fakeClocks) Time(_ context.Context, node string) (time.Time, error) {
	if f.down[node] {
		return time.Time{}, errors.New("connection refused")
	}
	// The peer reads its clock half way through the round trip; the
	// local clock moves on by the whole round trip. (One peer per test,
	// since the fake clock is shared.)
	at := f.clock.t.Add(f.rtt / 2).Add(f.offsets[node])
	f.clock.t = f.clock.t.Add(f.rtt)
	return at, nil
}

func TestClockSkew(t *testing.T) {
	for _, tc := range []struct {
		name    string
		offsets map[string]time.Duration
		rtt     time.Duration
		down    map[string]bool
		want    Status
		subs    []string
	}{
		{"alone", nil, 0, nil, OK, []string{"no other node"}},
		{"in sync", map[string]time.Duration{"n2": 200 * time.Millisecond}, 2 * time.Millisecond, nil, OK, []string{"largest offset 200ms (±1ms)"}},
		{"ahead", map[string]time.Duration{"n2": 2 * time.Second}, time.Millisecond, nil, Warning, []string{"n2 +2.0s"}},
		{"behind", map[string]time.Duration{"n2": -3 * time.Second}, time.Millisecond, nil, Warning, []string{"n2 -3.0s"}},
		{"far off", map[string]time.Duration{"n2": -6 * time.Second}, time.Millisecond, nil, Error, []string{"n2 -6.0s"}},
		// A slow answer does not prove a skew: 1.5s off, give or take 1s.
		{"slow answer", map[string]time.Duration{"n2": 1500 * time.Millisecond}, 2 * time.Second, nil, OK, nil},
		{"not answering", nil, 0, map[string]bool{"n3": true}, Warning, []string{"not answering: n3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)}
			f := fakeClocks{clock: clock, offsets: tc.offsets, rtt: tc.rtt, down: tc.down}
			expect(t, ClockSkew(f, time.Second, clock.now), tc.want, tc.subs...)
		})
	}
}
