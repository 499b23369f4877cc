// Package ec is the erasure-coded, geo-spread scos.Backend (ALBA-like):
// each object is split into k data fragments plus m parity fragments
// (Reed-Solomon) stored on k+m different ASDs (package asd), placed by
// weighted rendezvous hashing within the node and site bounds of the
// namespace's preset. Manifests, namespaces, the ASD registry and presets
// live in a KVStore (a BoltKV on one host, arakoon in a cluster).
//
// Reads fetch only the data fragments covering the range and decode only
// when one of them is missing, stale or corrupt. Background maintenance
// repairs degraded objects, drains decommissioned ASDs, scrubs and
// rebalances. Admin is its administration (what `ovs backend` does),
// in-process or over HTTP (NewAdminHandler, NewAdminClient).
package ec
