//! Instances: a named disk image with a home region and a backing.

use std::path::Path;

use geosnap_catalog::{Instance, NewInstance};
use geosnap_engine::image::Image;
use geosnap_engine::manifest::Backing;

use crate::{Error, Geosnap, Result};

impl Geosnap {
    /// Registers an instance. The image must exist and be readable; the region defaults to
    /// the first configured one.
    pub fn create_instance(
        &self,
        name: &str,
        image: &Path,
        region: Option<&str>,
        volume_backed: bool,
    ) -> Result<Instance> {
        geosnap_catalog::names::validate_name("instance", name)?;
        let region = match region {
            Some(r) => self.regions.get(r)?.name().to_string(),
            None => self.regions.names()[0].to_string(),
        };
        Image::open(image)?;
        let path = image
            .canonicalize()
            .map_err(|e| Error::io(format!("cannot resolve {}", image.display()), e))?;
        let path = path.to_str().ok_or_else(|| {
            Error::io(
                format!("image path {} is not UTF-8", path.display()),
                std::io::Error::other("unsupported path"),
            )
        })?;
        Ok(self.catalog.add_instance(&NewInstance {
            name: name.to_string(),
            image_path: path.to_string(),
            home_region: region,
            backing: if volume_backed {
                Backing::Volume
            } else {
                Backing::Image
            },
            created_at: self.now(),
        })?)
    }

    /// Every instance.
    pub fn instances(&self) -> Result<Vec<Instance>> {
        Ok(self.catalog.instances()?)
    }

    /// One instance.
    pub fn instance(&self, name: &str) -> Result<Instance> {
        Ok(self.catalog.instance(name)?)
    }

    /// Removes an instance; with `with_snapshots` its snapshots are deleted everywhere
    /// first, otherwise an instance with snapshots is refused.
    pub fn delete_instance(&self, name: &str, with_snapshots: bool) -> Result<Vec<String>> {
        self.catalog.instance(name)?;
        let mut deleted = Vec::new();
        if with_snapshots {
            for s in self.catalog.snapshots(Some(name))? {
                self.delete_snapshot_row(&s)?;
                deleted.push(s.id.to_hex());
            }
        }
        self.catalog.delete_instance(name)?;
        Ok(deleted)
    }
}
