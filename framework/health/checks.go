package health

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ovs-storage/ovs/scos/ec"
	"github.com/ovs-storage/ovs/volumedriver"
)

// Check names, as reports list them.
const (
	CheckArakoon      = "arakoon"
	CheckASDs         = "asds"
	CheckDegraded     = "degraded-objects"
	CheckWriteBuffer  = "write-buffer"
	CheckDTL          = "dtl"
	CheckNodes        = "nodes"
	CheckClockSkew    = "clock-skew"
	maxListedInDetail = 20
)

// --- arakoon ------------------------------------------------------------------

// ArakoonMember is a server of the arakoon cluster.
type ArakoonMember struct {
	ID    string
	Voter bool // false for a learner
}

// Arakoon is what the quorum check asks of the arakoon cluster.
type Arakoon interface {
	// Master returns the id of the master (leader), confirmed by itself.
	Master(ctx context.Context) (string, error)
	// Members returns the raft configuration.
	Members(ctx context.Context) ([]ArakoonMember, error)
	// Ping reaches member id itself (not through the master).
	Ping(ctx context.Context, id string) error
}

// ArakoonQuorum checks that arakoon has a leader and a reachable majority
// of voters: an error without them (the model and the backend's metadata
// cannot change), a warning when some member is unreachable. Each member
// gets probe to answer.
func ArakoonQuorum(a Arakoon, probe time.Duration) Check {
	return Check{Name: CheckArakoon, Run: func(ctx context.Context) Result {
		master, err := a.Master(ctx)
		if err != nil {
			return Result{Status: Error, Message: fmt.Sprintf("no leader: %v", err)}
		}
		members, err := a.Members(ctx)
		if err != nil {
			return Result{Status: Error, Message: fmt.Sprintf("leader %s, but its members could not be read: %v", master, err)}
		}
		errs := make([]error, len(members))
		var wg sync.WaitGroup
		for i, m := range members {
			wg.Add(1)
			go func() {
				defer wg.Done()
				pctx, cancel := context.WithTimeout(ctx, probe)
				defer cancel()
				errs[i] = a.Ping(pctx, m.ID)
			}()
		}
		wg.Wait()
		voters, reachable := 0, 0
		unreachable := map[string]string{}
		for i, m := range members {
			if m.Voter {
				voters++
			}
			if errs[i] != nil {
				unreachable[m.ID] = errs[i].Error()
				continue
			}
			if m.Voter {
				reachable++
			}
		}
		details := map[string]any{"leader": master, "members": len(members), "voters": voters, "reachable_voters": reachable}
		if len(unreachable) > 0 {
			details["unreachable"] = unreachable
		}
		quorum := voters/2 + 1
		switch {
		case voters == 0:
			return Result{Status: Error, Message: fmt.Sprintf("leader %s reports no voting member", master), Details: details}
		case reachable < quorum:
			return Result{Status: Error, Message: fmt.Sprintf("no quorum: %d of %d voters reachable, %d needed (unreachable: %s)",
				reachable, voters, quorum, strings.Join(sortedKeys(unreachable), ", ")), Details: details}
		case len(unreachable) > 0:
			return Result{Status: Warning, Message: fmt.Sprintf("leader %s, %d of %d voters reachable; unreachable: %s",
				master, reachable, voters, strings.Join(sortedKeys(unreachable), ", ")), Details: details}
		}
		return Result{Status: OK, Message: fmt.Sprintf("leader %s, %d of %d voters reachable", master, reachable, voters), Details: details}
	}}
}

// --- the erasure-coded backend -------------------------------------------------

// ASDs is what the ASD check asks of the erasure-coded backend (*ec.Backend
// has it).
type ASDs interface {
	// ListASDs returns the registered ASDs with their health as this
	// node's backend last probed them.
	ListASDs(ctx context.Context) ([]ec.ASDStatus, error)
	// Writable returns nil if the default preset can place a new object
	// on the ASDs that are up.
	Writable(ctx context.Context) error
}

// ASDHealth checks the ASDs: an error when the backend cannot take writes
// at its preset (not enough ASDs up for any of its policies), a warning
// when an active ASD is down or not probed yet.
func ASDHealth(b ASDs) Check {
	return Check{Name: CheckASDs, Run: func(ctx context.Context) Result {
		list, err := b.ListASDs(ctx)
		if err != nil {
			return Result{Status: Error, Message: fmt.Sprintf("could not list the ASDs: %v", err)}
		}
		var active, up int
		var down, unknown, draining []string
		downErr := map[string]string{}
		for _, a := range list {
			if a.State != ec.ASDActive {
				draining = append(draining, a.ID+" ("+a.State+")")
				continue
			}
			active++
			switch a.Health {
			case "up":
				up++
			case "down":
				down = append(down, a.ID)
				what := a.Error
				if !a.DownSince.IsZero() {
					what = fmt.Sprintf("down since %s: %s", a.DownSince.UTC().Format(time.RFC3339), a.Error)
				}
				downErr[a.ID] = what
			default:
				unknown = append(unknown, a.ID)
			}
		}
		details := map[string]any{"asds": len(list), "active": active, "up": up}
		if len(down) > 0 {
			details["down"] = downErr
		}
		if len(unknown) > 0 {
			details["not_probed"] = unknown
		}
		if len(draining) > 0 {
			details["not_active"] = draining
		}
		if err := b.Writable(ctx); err != nil {
			if ctx.Err() != nil {
				return Result{Status: Error, Message: fmt.Sprintf("could not tell whether the backend can take writes: %v", err), Details: details}
			}
			return Result{Status: Error, Message: fmt.Sprintf("the backend cannot take writes: %v", err), Details: details}
		}
		switch {
		case len(down) > 0:
			return Result{Status: Warning, Message: fmt.Sprintf("%d of %d active ASDs up; down: %s", up, active, strings.Join(down, ", ")), Details: details}
		case len(unknown) > 0:
			return Result{Status: Warning, Message: fmt.Sprintf("%d of %d active ASDs up; not probed yet: %s", up, active, strings.Join(unknown, ", ")), Details: details}
		}
		return Result{Status: OK, Message: fmt.Sprintf("%d of %d active ASDs up", up, active), Details: details}
	}}
}

// BackendStatus is what the degraded-objects check asks of the backend
// (*ec.Backend has it).
type BackendStatus interface {
	Status(ctx context.Context) (ec.Status, error)
}

// DegradedObjects checks the backend's objects: an error when some cannot
// be read now (fewer than k of their fragments on ASDs that are up), a
// warning when some are degraded (a fragment not on an active ASD that is
// up, or flagged for repair), with the count and the repair under way.
func DegradedObjects(b BackendStatus) Check {
	return Check{Name: CheckDegraded, Run: func(ctx context.Context) Result {
		st, err := b.Status(ctx)
		if err != nil {
			return Result{Status: Error, Message: fmt.Sprintf("could not read the backend's status: %v", err)}
		}
		details := map[string]any{"objects": st.Objects, "degraded": st.Degraded, "unavailable": st.Unavailable, "flagged": st.Flagged}
		repair := ""
		if m := st.Maintenance; m.Task != "" {
			details["maintenance"] = m
			repair = fmt.Sprintf("; %s under way: %d of %d", m.Task, m.Done, m.Total)
		}
		switch {
		case st.Unavailable > 0:
			return Result{Status: Error, Message: fmt.Sprintf("%d of %d objects cannot be read now (fewer than k fragments on ASDs that are up)%s",
				st.Unavailable, st.Objects, repair), Details: details}
		case st.Degraded > 0:
			return Result{Status: Warning, Message: fmt.Sprintf("%d of %d objects degraded (%d flagged for repair)%s",
				st.Degraded, st.Objects, st.Flagged, repair), Details: details}
		}
		return Result{Status: OK, Message: fmt.Sprintf("%d objects, none degraded%s", st.Objects, repair), Details: details}
	}}
}

// --- vdisks ---------------------------------------------------------------------

// VDisks lists the vdisks of the cluster, with what their owners report.
type VDisks interface {
	List(ctx context.Context) ([]volumedriver.VolumeInfo, error)
}

// Thresholds of write-buffer pressure: the share of the bound on data
// not yet on the backend past which writes wait.
const (
	WriteBufferWarn  = 0.80
	WriteBufferError = 0.95
)

// WriteBuffer checks the write-buffer pressure of every vdisk: warning
// above 80% of maxPending, error above 95%. What presses is the data not
// yet uploaded (PendingUploadBytes): past maxPending (the driver's
// MaxPendingUploadBytes) the vdisk's writes wait for the backend. The
// write buffer's total (WriteBufferBytes) is reported but not judged: it
// also holds uploaded SCOs kept as a cache, and sits at its limit on any
// busy vdisk by design (they are evicted past it).
func WriteBuffer(v VDisks, maxPending int64) Check {
	return Check{Name: CheckWriteBuffer, Run: func(ctx context.Context) Result {
		if maxPending <= 0 {
			return Result{Status: Error, Message: fmt.Sprintf("no bound on pending uploads configured (%d)", maxPending)}
		}
		infos, err := v.List(ctx)
		if err != nil {
			return Result{Status: Error, Message: fmt.Sprintf("could not list the vdisks: %v", err)}
		}
		type fill struct {
			name  string
			share float64
		}
		var worst []fill
		status := OK
		per := map[string]any{}
		maxShare := 0.0
		for _, in := range infos {
			share := float64(in.PendingUploadBytes) / float64(maxPending)
			maxShare = max(maxShare, share)
			s := OK
			switch {
			case share > WriteBufferError:
				s = Error
			case share > WriteBufferWarn:
				s = Warning
			}
			if s > OK {
				worst = append(worst, fill{in.Name, share})
				if len(per) < maxListedInDetail {
					per[in.Name] = map[string]any{"pending_upload_bytes": in.PendingUploadBytes,
						"write_buffer_bytes": in.WriteBufferBytes, "fill": round2(share), "owner": in.Owner}
				}
			}
			status = Worst(status, s)
		}
		details := map[string]any{"vdisks": len(infos), "max_pending_upload_bytes": maxPending, "max_fill": round2(maxShare)}
		if len(per) > 0 {
			details["pressed"] = per
		}
		if status == OK {
			return Result{Status: OK, Message: fmt.Sprintf("%d vdisks, highest fill %.0f%% of the pending-upload bound", len(infos), 100*maxShare), Details: details}
		}
		sort.Slice(worst, func(i, j int) bool { return worst[i].share > worst[j].share })
		parts := make([]string, 0, 3)
		for i, w := range worst {
			if i == 3 {
				parts = append(parts, fmt.Sprintf("and %d more", len(worst)-3))
				break
			}
			parts = append(parts, fmt.Sprintf("%s %.0f%%", w.name, 100*w.share))
		}
		return Result{Status: status, Message: fmt.Sprintf("data waiting for the backend near the bound where writes wait: %s",
			strings.Join(parts, ", ")), Details: details}
	}}
}

// NodeCount says how many nodes the cluster has.
type NodeCount interface {
	NodeCount(ctx context.Context) (int, error)
}

// DTLStates checks the vdisks' DTLs: a warning for a DTL degraded (no
// session, being placed again), catching up, or standalone (no other node
// can hold it) where the cluster has other nodes; fine for ok and disabled
// (mode none). In a cluster of one node, standalone is what it can do, so
// it is fine too.
func DTLStates(v VDisks, nodes NodeCount) Check {
	return Check{Name: CheckDTL, Run: func(ctx context.Context) Result {
		infos, err := v.List(ctx)
		if err != nil {
			return Result{Status: Error, Message: fmt.Sprintf("could not list the vdisks: %v", err)}
		}
		n, err := nodes.NodeCount(ctx)
		if err != nil {
			return Result{Status: Error, Message: fmt.Sprintf("could not count the nodes: %v", err)}
		}
		counts := map[string]int{}
		bad := map[string]string{}
		var unknown []string
		for _, in := range infos {
			state := in.DTLState
			switch state {
			case volumedriver.DTLStateOK, volumedriver.DTLStateDisabled:
			case volumedriver.DTLStateStandalone:
				if n > 1 {
					bad[in.Name] = state
				}
			case volumedriver.DTLStateDegraded, volumedriver.DTLStateCatchingUp:
				bad[in.Name] = state
			case "":
				// Its owner did not say: it is unreachable, or the vdisk
				// is starting or being created.
				state = "unknown"
				if in.State != "creating" && in.State != "starting" {
					unknown = append(unknown, in.Name)
				}
			default:
				bad[in.Name] = state
			}
			counts[state]++
		}
		details := map[string]any{"vdisks": len(infos), "states": counts, "nodes": n}
		if len(bad) > 0 {
			details["not_ok"] = limitMap(bad)
		}
		if len(unknown) > 0 {
			details["unknown"] = limitList(unknown)
		}
		switch {
		case len(bad) > 0:
			return Result{Status: Warning, Message: fmt.Sprintf("%d of %d vdisks without a complete DTL: %s",
				len(bad), len(infos), summarize(bad)), Details: details}
		case len(unknown) > 0:
			return Result{Status: Warning, Message: fmt.Sprintf("DTL state unknown for %d vdisks (owner unreachable?): %s",
				len(unknown), strings.Join(limitList(unknown), ", ")), Details: details}
		}
		msg := fmt.Sprintf("%d vdisks, every DTL ok or disabled", len(infos))
		if c := counts[volumedriver.DTLStateStandalone]; c > 0 {
			msg = fmt.Sprintf("%d vdisks; %d standalone (a cluster of one node has nowhere else for a DTL)", len(infos), c)
		}
		return Result{Status: OK, Message: msg, Details: details}
	}}
}

// --- nodes ----------------------------------------------------------------------

// NodeBeat is a node's heartbeat as this node sees it.
type NodeBeat struct {
	ID string
	// Beat: the node has sent a heartbeat. Silent is how long ago it last
	// changed, measured on this node's clock where it could watch it
	// change (so that clock skew does not count).
	Beat   bool
	Silent time.Duration
	Last   time.Time // the heartbeat's own time stamp (the sender's clock)
}

// Heartbeats lists the nodes with their heartbeats.
type Heartbeats interface {
	Heartbeats(ctx context.Context) ([]NodeBeat, error)
}

// NodesAlive checks the nodes' heartbeats: a warning for a node whose
// heartbeat has been silent longer than missAfter (or that never sent
// one), an error if none is alive.
func NodesAlive(h Heartbeats, missAfter time.Duration) Check {
	return Check{Name: CheckNodes, Run: func(ctx context.Context) Result {
		beats, err := h.Heartbeats(ctx)
		if err != nil {
			return Result{Status: Error, Message: fmt.Sprintf("could not read the heartbeats: %v", err)}
		}
		missing := map[string]string{}
		alive := 0
		for _, b := range beats {
			switch {
			case !b.Beat:
				missing[b.ID] = "no heartbeat ever"
			case b.Silent > missAfter:
				missing[b.ID] = fmt.Sprintf("silent for %s", b.Silent.Round(time.Second))
			default:
				alive++
			}
		}
		details := map[string]any{"nodes": len(beats), "alive": alive, "miss_after_s": missAfter.Seconds()}
		if len(missing) > 0 {
			details["missing"] = missing
		}
		switch {
		case len(beats) == 0:
			return Result{Status: Error, Message: "the model has no node", Details: details}
		case alive == 0:
			return Result{Status: Error, Message: fmt.Sprintf("no node sends heartbeats: %s", summarize(missing)), Details: details}
		case len(missing) > 0:
			return Result{Status: Warning, Message: fmt.Sprintf("%d of %d nodes alive; missing heartbeats: %s", alive, len(beats), summarize(missing)), Details: details}
		}
		return Result{Status: OK, Message: fmt.Sprintf("%d of %d nodes alive", alive, len(beats)), Details: details}
	}}
}

// --- clock skew -------------------------------------------------------------------

// Clock skew thresholds.
const (
	ClockSkewWarn  = time.Second
	ClockSkewError = 5 * time.Second
)

// Clocks reaches the other nodes' clocks.
type Clocks interface {
	// Peers returns the other nodes of the cluster.
	Peers(ctx context.Context) ([]string, error)
	// Time asks node for its current time.
	Time(ctx context.Context, node string) (time.Time, error)
}

// ClockSkew measures the skew between this node's clock and the others',
// as NTP does: it notes its time t0, asks the other node for its time t,
// notes t1, and takes t - (t0+t1)/2 as the offset, give or take half the
// round trip. It judges the least skew the measurement proves (|offset|
// minus half the round trip), so a slow answer never raises a false
// alarm: warning above 1s, error above 5s. A node that does not answer
// is a warning; each gets probe to answer. now is this node's clock
// (time.Now if nil).
func ClockSkew(c Clocks, probe time.Duration, now func() time.Time) Check {
	if now == nil {
		now = time.Now
	}
	return Check{Name: CheckClockSkew, Run: func(ctx context.Context) Result {
		peers, err := c.Peers(ctx)
		if err != nil {
			return Result{Status: Error, Message: fmt.Sprintf("could not list the other nodes: %v", err)}
		}
		if len(peers) == 0 {
			return Result{Status: OK, Message: "no other node to compare clocks with"}
		}
		type meas struct {
			offset, rtt time.Duration
			err         error
		}
		ms := make([]meas, len(peers))
		var wg sync.WaitGroup
		for i, p := range peers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				pctx, cancel := context.WithTimeout(ctx, probe)
				defer cancel()
				t0 := now()
				t, err := c.Time(pctx, p)
				t1 := now()
				if err != nil {
					ms[i].err = err
					return
				}
				rtt := t1.Sub(t0)
				ms[i] = meas{offset: t.Sub(t0.Add(rtt / 2)), rtt: rtt}
			}()
		}
		wg.Wait()
		status := OK
		per := map[string]any{}
		var bad, unreachable []string
		var worst, worstOffset, worstRTT time.Duration
		for i, p := range peers {
			m := ms[i]
			if m.err != nil {
				per[p] = map[string]any{"error": m.err.Error()}
				unreachable = append(unreachable, p)
				status = Worst(status, Warning)
				continue
			}
			skew := max(absDur(m.offset)-m.rtt/2, 0)
			worst = max(worst, skew)
			if absDur(m.offset) >= worstOffset {
				worstOffset, worstRTT = absDur(m.offset), m.rtt
			}
			per[p] = map[string]any{"offset_ms": m.offset.Milliseconds(), "rtt_ms": m.rtt.Milliseconds()}
			s := OK
			switch {
			case skew > ClockSkewError:
				s = Error
			case skew > ClockSkewWarn:
				s = Warning
			}
			if s > OK {
				bad = append(bad, fmt.Sprintf("%s %+.1fs", p, m.offset.Seconds()))
			}
			status = Worst(status, s)
		}
		details := map[string]any{"peers": per, "max_skew_ms": worst.Milliseconds()}
		var msg []string
		if len(bad) > 0 {
			msg = append(msg, "clocks off: "+strings.Join(bad, ", "))
		}
		if len(unreachable) > 0 {
			msg = append(msg, "not answering: "+strings.Join(unreachable, ", "))
		}
		if status == OK {
			return Result{Status: OK, Message: fmt.Sprintf("%d other nodes, largest offset %s (±%s)", len(peers),
				worstOffset.Round(time.Millisecond), (worstRTT / 2).Round(time.Millisecond)), Details: details}
		}
		return Result{Status: status, Message: strings.Join(msg, "; "), Details: details}
	}}
}

// --- helpers ----------------------------------------------------------------------

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		if d == math.MinInt64 {
			return math.MaxInt64
		}
		return -d
	}
	return d
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// summarize lists "key (value)" pairs in key order, the first few.
func summarize(m map[string]string) string {
	keys := sortedKeys(m)
	parts := make([]string, 0, min(len(keys), 4))
	for i, k := range keys {
		if i == 3 {
			parts = append(parts, fmt.Sprintf("and %d more", len(keys)-3))
			break
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func limitList(l []string) []string {
	sort.Strings(l)
	if len(l) > maxListedInDetail {
		return l[:maxListedInDetail]
	}
	return l
}

func limitMap(m map[string]string) map[string]string {
	if len(m) <= maxListedInDetail {
		return m
	}
	out := map[string]string{}
	for _, k := range sortedKeys(m)[:maxListedInDetail] {
		out[k] = m[k]
	}
	return out
}
