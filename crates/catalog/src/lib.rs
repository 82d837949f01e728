//! geosnap-catalog: the SQLite index of instances, snapshots, replicas and jobs. Filled by
//! the catalog issue.
