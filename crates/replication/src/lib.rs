//! geosnap-replication: regions backed by object stores, replicated snapshot writes,
//! fallback reads, the fault simulator and repair. Filled by the replication issue.
