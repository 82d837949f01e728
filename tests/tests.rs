//! End-to-end tests: each runs the real `geosnap` binary in a fresh temporary data
//! directory. One module per area; `util` holds the shared helpers.

#![allow(clippy::unwrap_used)]

// Helpers and assertions: what the binary does as a user drives it.
mod util;

// The life of an instance: create, snapshot twice, list, restore from every region, delete.
mod life;

// Retention instants, prune and gc, exactly as the seed guide says.
mod retention;

// The job queue: --no-wait, worker --once, a worker killed mid-job.
mod jobs;

// Bad input: one clear sentence on stderr, a non-zero exit, nothing changed.
mod bad_input;

// Regions through the command line: fail, heal, verify, residency.
mod regions;

// The offline demo: every step's figures present and consistent.
mod demo;

// Disaster recovery: rebuild the catalog from one surviving region.
mod dr;

// The crash-fault matrix and gc beside snapshots in flight.
mod crash;

// Regions on S3: the journey on three Swift buckets, and clear errors for bad endpoints.
mod s3;

// geosnap bench: stage rates, the ceiling, the pipelines, the chunker comparison.
mod bench;
