package metrics

import "github.com/prometheus/client_golang/prometheus"

// The metrics' descriptors. They are immutable values shared by every
// Collector (what the client library's own collectors do too).

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descVDiskOps = desc("ovs_vdisk_ops_total",
		"I/O operations completed on a vdisk served by this node, by kind (read, write, flush, trim; write-zeroes count as trim, compare-and-write as write).", "vdisk", "op")
	descVDiskBytes = desc("ovs_vdisk_bytes_total",
		"Bytes moved by a vdisk's I/O operations (the range length for trim).", "vdisk", "op")
	descVDiskErrors = desc("ovs_vdisk_errors_total",
		"I/O operations on a vdisk that failed.", "vdisk", "op")
	descVDiskLatency = desc("ovs_vdisk_latency_seconds",
		"Service time of a vdisk's I/O operations, as the frontend sees the volume.", "vdisk", "op")
	descCacheHits = desc("ovs_read_cache_hits_total",
		"Clusters of a vdisk served from the read cache.", "vdisk")
	descCacheMisses = desc("ovs_read_cache_misses_total",
		"Read cache lookups of a vdisk that missed and went to the backend.", "vdisk")
	descVDiskSize = desc("ovs_vdisk_size_bytes",
		"Size of a vdisk.", "vdisk")
	descVDiskWriteBuffer = desc("ovs_vdisk_write_buffer_bytes",
		"What a vdisk's SCOs take in the local write buffer.", "vdisk")
	descVDiskPendingUpload = desc("ovs_vdisk_pending_upload_bytes",
		"Data of a vdisk in the write buffer that is not on the backend yet (the upload backlog).", "vdisk")
	descVDiskClients = desc("ovs_vdisk_clients",
		"Frontend clients that have a vdisk open.", "vdisk")
	descVDiskHealthy = desc("ovs_vdisk_healthy",
		"1 if a vdisk's state is ok, 0 if it is failed, degraded, releasing or fenced.", "vdisk")
	descVDiskDTLState = desc("ovs_vdisk_dtl_state",
		"1 for a vdisk's current DTL state (ok, catching_up, degraded, standalone, disabled), 0 for the others.", "vdisk", "state")

	descBackendObjects     = desc("ovs_backend_objects", "Objects on the erasure-coded backend.")
	descBackendBytes       = desc("ovs_backend_bytes", "Logical bytes of the backend's objects.")
	descBackendStoredBytes = desc("ovs_backend_stored_bytes", "Bytes of the backend's fragments (data and parity).")
	descBackendDegraded    = desc("ovs_backend_degraded_objects",
		"Objects with a fragment not on an active ASD that is up, or flagged for repair.")
	descBackendUnavailable = desc("ovs_backend_unavailable_objects", "Objects that cannot be read now (fewer than k fragments up).")
	descBackendFlagged     = desc("ovs_backend_flagged_objects", "Objects flagged for the repair to look at.")
	descBackendNamespaces  = desc("ovs_backend_namespaces", "Namespaces on the backend.")
	descBackendCapacity    = desc("ovs_backend_capacity_bytes", "Capacity of the backend's ASDs.")
	descBackendUsed        = desc("ovs_backend_used_bytes", "Used space of the backend's ASDs.")
	descBackendFree        = desc("ovs_backend_free_bytes", "Free space of the backend's ASDs.")
	descBackendASDs        = desc("ovs_backend_asds", "ASDs registered with the backend.")
	descBackendASDsUp      = desc("ovs_backend_asds_up", "ASDs of the backend that answer.")
	descMaintRunning       = desc("ovs_backend_maintenance_running",
		"1 while the backend's maintenance task (repair, scrub, rebalance) is under way.", "task")
	descMaintDone     = desc("ovs_backend_maintenance_done", "Objects done by the maintenance task under way (or the last one).")
	descMaintTotal    = desc("ovs_backend_maintenance_total", "Objects the maintenance task under way (or the last one) has to do.")
	descMaintLastPass = desc("ovs_backend_maintenance_last_pass_timestamp_seconds",
		"When the last full maintenance pass (repair of every object) finished.")
	descMaintLastScrub   = desc("ovs_backend_last_scrub_timestamp_seconds", "When the last scrub of the backend finished.")
	descObjectsRepaired  = desc("ovs_backend_objects_repaired_total", "Objects the backend repaired since this node started.")
	descFragmentsRebuilt = desc("ovs_backend_fragments_rebuilt_total", "Fragments rewritten where they were.")
	descFragmentsMoved   = desc("ovs_backend_fragments_moved_total", "Fragments rebuilt or copied onto another ASD.")
	descRepairFailures   = desc("ovs_backend_repair_failures_total", "Object repairs that failed.")
	descDegradedReads    = desc("ovs_backend_degraded_reads_total", "Reads that had to decode from parity.")
	descCorruptFragments = desc("ovs_backend_corrupt_fragments_total", "Corrupt fragments found by reads and scrubs.")
	descMissingFragments = desc("ovs_backend_missing_fragments_total", "Missing fragments found by reads and scrubs.")

	descASDUp        = desc("ovs_asd_up", "1 if the ASD answers its health probe.", "asd", "node")
	descASDActive    = desc("ovs_asd_active", "1 if the ASD takes new fragments (not decommissioning or decommissioned).", "asd", "node")
	descASDUsed      = desc("ovs_asd_used_bytes", "Space the ASD uses.", "asd", "node")
	descASDFree      = desc("ovs_asd_free_bytes", "Free space of the ASD.", "asd", "node")
	descASDCapacity  = desc("ovs_asd_capacity_bytes", "Capacity of the ASD.", "asd", "node")
	descASDFragments = desc("ovs_asd_fragments", "Fragments on the ASD.", "asd", "node")

	descArakoonMembers   = desc("ovs_arakoon_members", "Members of the arakoon cluster, as its master sees them.")
	descArakoonUp        = desc("ovs_arakoon_up", "1 if the arakoon node answered its statistics.", "node")
	descArakoonLeader    = desc("ovs_arakoon_leader", "1 if the arakoon node sees itself as the raft leader (master).", "node")
	descArakoonTerm      = desc("ovs_arakoon_term", "The arakoon node's raft term.", "node")
	descArakoonApplied   = desc("ovs_arakoon_applied_index", "The last raft log index the arakoon node applied to its store.", "node")
	descArakoonCommit    = desc("ovs_arakoon_commit_index", "The arakoon node's raft commit index.", "node")
	descArakoonLastIndex = desc("ovs_arakoon_last_index", "The last index in the arakoon node's raft log.", "node")
	descArakoonKeys      = desc("ovs_arakoon_keys", "Keys in the arakoon node's store.", "node")
)

var allDescs = []*prometheus.Desc{
	descVDiskOps, descVDiskBytes, descVDiskErrors, descVDiskLatency, descCacheHits, descCacheMisses,
	descVDiskSize, descVDiskWriteBuffer, descVDiskPendingUpload, descVDiskClients, descVDiskHealthy, descVDiskDTLState,
	descBackendObjects, descBackendBytes, descBackendStoredBytes, descBackendDegraded, descBackendUnavailable,
	descBackendFlagged, descBackendNamespaces, descBackendCapacity, descBackendUsed, descBackendFree,
	descBackendASDs, descBackendASDsUp, descMaintRunning, descMaintDone, descMaintTotal, descMaintLastPass,
	descMaintLastScrub, descObjectsRepaired, descFragmentsRebuilt, descFragmentsMoved, descRepairFailures,
	descDegradedReads, descCorruptFragments, descMissingFragments,
	descASDUp, descASDActive, descASDUsed, descASDFree, descASDCapacity, descASDFragments,
	descArakoonMembers, descArakoonUp, descArakoonLeader, descArakoonTerm, descArakoonApplied,
	descArakoonCommit, descArakoonLastIndex, descArakoonKeys,
}
