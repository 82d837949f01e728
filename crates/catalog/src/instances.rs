//! Instances: named disk images with a home region and a backing.

use geosnap_engine::manifest::Backing;
use rusqlite::{OptionalExtension, Row, params};

use crate::error::Context;
use crate::names::{validate_name, validate_region};
use crate::{Catalog, Error};

/// What `add_instance` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewInstance {
    /// Unique name (see [`validate_name`]).
    pub name: String,
    /// Path of the disk image.
    pub image_path: String,
    /// Region that holds volume-backed snapshots and is read first.
    pub home_region: String,
    /// Image- or volume-backed.
    pub backing: Backing,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

/// An instance as the catalog holds it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Instance {
    /// Unique name.
    pub name: String,
    /// Path of the disk image; empty when unknown (an instance rebuilt from a manifest).
    pub image_path: String,
    /// Home region.
    pub home_region: String,
    /// Image- or volume-backed.
    pub backing: Backing,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

const COLUMNS: &str = "name, image_path, home_region, backing, created_at";

/// The spelling of a backing in the catalog (the engine's `Display`).
pub(crate) fn backing_text(b: Backing) -> &'static str {
    match b {
        Backing::Image => "image",
        Backing::Volume => "volume",
    }
}

/// Reads a backing column.
pub(crate) fn backing_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<Backing> {
    let text: String = row.get(idx)?;
    match text.as_str() {
        "image" => Ok(Backing::Image),
        "volume" => Ok(Backing::Volume),
        _ => Err(rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            format!("{text:?} is not a backing (image or volume)").into(),
        )),
    }
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<Instance> {
    Ok(Instance {
        name: row.get(0)?,
        image_path: row.get(1)?,
        home_region: row.get(2)?,
        backing: backing_at(row, 3)?,
        created_at: row.get(4)?,
    })
}

impl Catalog {
    /// Adds an instance; [`Error::InstanceExists`] if the name is taken.
    pub fn add_instance(&self, new: &NewInstance) -> Result<Instance, Error> {
        validate_name("instance", &new.name)?;
        validate_region(&new.home_region)?;
        self.write("adding an instance", |tx| {
            let inserted = tx
                .execute(
                    "INSERT INTO instances (name, image_path, home_region, backing, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name) DO NOTHING",
                    params![
                        new.name,
                        new.image_path,
                        new.home_region,
                        backing_text(new.backing),
                        new.created_at
                    ],
                )
                .during("adding an instance")?;
            if inserted == 0 {
                return Err(Error::InstanceExists {
                    name: new.name.clone(),
                });
            }
            Ok(Instance {
                name: new.name.clone(),
                image_path: new.image_path.clone(),
                home_region: new.home_region.clone(),
                backing: new.backing,
                created_at: new.created_at,
            })
        })
    }

    /// The instance with this name; [`Error::InstanceNotFound`] if none.
    pub fn instance(&self, name: &str) -> Result<Instance, Error> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM instances WHERE name = ?1"),
                [name],
                from_row,
            )
            .optional()
            .during("reading an instance")?
            .ok_or_else(|| Error::InstanceNotFound { name: name.into() })
    }

    /// Every instance, ordered by name.
    pub fn instances(&self) -> Result<Vec<Instance>, Error> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM instances ORDER BY name"))
            .during("listing instances")?;
        stmt.query_map([], from_row)
            .and_then(Iterator::collect)
            .during("listing instances")
    }

    /// Deletes an instance; refused with [`Error::InstanceHasSnapshots`] while any
    /// snapshot, even a failed one, references it.
    pub fn delete_instance(&self, name: &str) -> Result<(), Error> {
        self.write("deleting an instance", |tx| {
            let count: u64 = tx
                .query_row(
                    "SELECT count(*) FROM snapshots WHERE instance = ?1",
                    [name],
                    |r| r.get(0),
                )
                .during("counting an instance's snapshots")?;
            if count > 0 {
                return Err(Error::InstanceHasSnapshots {
                    name: name.into(),
                    count,
                });
            }
            let deleted = tx
                .execute("DELETE FROM instances WHERE name = ?1", [name])
                .during("deleting an instance")?;
            if deleted == 0 {
                return Err(Error::InstanceNotFound { name: name.into() });
            }
            Ok(())
        })
    }
}
