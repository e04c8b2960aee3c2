//! A watched folder of Service documents whose `endpoints` are the instances (for services
//! outside the mesh, VMs, or a mesh without a registry). An invalid folder is reported and the
//! instances it last declared stay. When it is the policy folder itself, the policy loader
//! hands it each load (one parse for both) instead of it watching the folder again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use weft_api::{Document, EndpointSpec};

use super::Registry;
use crate::serve::catalog::Catalog;
use crate::serve::folder;
use crate::serve::policy::service_key;

pub const SOURCE: &str = "yaml-dir";

pub struct YamlDirRegistry {
    catalog: Arc<Catalog>,
    dir: PathBuf,
    /// False when the policy loader feeds it (the folder is the policy folder).
    watches: bool,
}

impl YamlDirRegistry {
    pub fn new(catalog: Arc<Catalog>, dir: PathBuf) -> Arc<YamlDirRegistry> {
        Arc::new(YamlDirRegistry { catalog, dir, watches: true })
    }

    /// A registry fed by the policy loader through [`YamlDirRegistry::take_instances`].
    pub fn fed_by_policy(catalog: Arc<Catalog>, dir: PathBuf) -> Arc<YamlDirRegistry> {
        Arc::new(YamlDirRegistry { catalog, dir, watches: false })
    }

    /// Registers the endpoints of the Service documents in `files`, taking them out.
    pub fn take_instances(&self, files: &mut [(String, Vec<Document>)]) {
        let mut instances: BTreeMap<String, Vec<EndpointSpec>> = BTreeMap::new();
        for doc in files.iter_mut().flat_map(|(_, docs)| docs) {
            if let Document::Service(s) = doc
                && !s.spec.endpoints.is_empty()
            {
                let key = service_key(&s.metadata.name, &s.metadata.namespace);
                instances.entry(key).or_default().append(&mut s.spec.endpoints);
            }
        }
        let n: usize = instances.values().map(Vec::len).sum();
        if self.catalog.replace_source(SOURCE, instances) {
            tracing::info!(dir = %self.dir.display(), instances = n, "registry folder loaded");
        }
    }

    fn load(&self) {
        match folder::load(&self.dir) {
            Ok(mut files) => self.take_instances(&mut files),
            Err(problems) => {
                for p in &problems {
                    tracing::error!(problem = %p, "registry folder rejected; its last good instances stay");
                }
            }
        }
    }
}

impl Registry for YamlDirRegistry {
    fn source(&self) -> &'static str {
        SOURCE
    }

    fn start(self: Arc<Self>) -> Result<(), String> {
        if !self.watches {
            return Ok(());
        }
        self.load();
        let me = self.clone();
        folder::watch(self.dir.clone(), move || me.load())
    }
}
