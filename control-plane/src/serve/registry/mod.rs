//! Where instances come from: registry backends behind one trait, each feeding the catalog
//! under its own source name (an instance is removed only by the backend that added it).

pub mod kubernetes;
pub mod self_registration;
pub mod yaml_dir;

pub use self_registration::SelfRegistration;
pub use yaml_dir::YamlDirRegistry;

/// A source of service instances.
pub trait Registry: Send + Sync {
    /// The source name in metrics and `weft status` (`self-registration`, `yaml-dir`).
    fn source(&self) -> &'static str;

    /// Starts keeping the catalog up to date (background tasks, watches). Called once, inside
    /// the server's runtime.
    fn start(self: std::sync::Arc<Self>) -> Result<(), String>;
}
