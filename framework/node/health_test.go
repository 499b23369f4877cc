package node

import (
	"testing"
	"time"

	"github.com/ovs-storage/ovs/framework/model"
)

func TestLivenessSilence(t *testing.T) {
	now := time.Now()
	// A peer whose clock runs an hour ahead: its time stamps say nothing
	// of how long ago it beat; when this node saw them change does.
	ahead := now.Add(time.Hour)
	for _, tc := range []struct {
		name    string
		setup   func(l *liveness)
		node    string
		self    bool
		rec     model.Heartbeat
		atLeast time.Duration
		below   time.Duration
	}{
		{name: "self, from its last heartbeat", node: "me", self: true,
			setup: func(l *liveness) { l.beat(now.Add(-4 * time.Second)) },
			rec:   model.Heartbeat{At: now.Add(-time.Hour)}, atLeast: 4 * time.Second, below: time.Minute},
		{name: "self before its first heartbeat: the record", node: "me", self: true,
			rec: model.Heartbeat{At: now.Add(-20 * time.Second)}, atLeast: 20 * time.Second, below: time.Minute},
		{name: "watched peer, unchanged since seen", node: "p",
			setup: func(l *liveness) { l.seen["p"] = seenBeat{at: ahead, changed: now.Add(-30 * time.Second)} },
			rec:   model.Heartbeat{At: ahead}, atLeast: 30 * time.Second, below: time.Minute},
		{name: "watched peer, changed since the last look", node: "p",
			setup: func(l *liveness) { l.seen["p"] = seenBeat{at: ahead, changed: now.Add(-30 * time.Second)} },
			rec:   model.Heartbeat{At: ahead.Add(2 * time.Second)}, below: time.Second},
		{name: "unwatched peer: the record's time", node: "p",
			rec: model.Heartbeat{At: now.Add(-10 * time.Second)}, atLeast: 10 * time.Second, below: time.Minute},
		{name: "unwatched peer ahead: never negative", node: "p",
			rec: model.Heartbeat{At: ahead}, below: time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLiveness(15 * time.Second)
			if tc.setup != nil {
				tc.setup(l)
			}
			got := l.silence(tc.node, tc.self, tc.rec)
			if got < tc.atLeast || got >= tc.below {
				t.Fatalf("silence = %v, want in [%v, %v)", got, tc.atLeast, tc.below)
			}
		})
	}
}
