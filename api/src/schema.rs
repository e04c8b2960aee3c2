//! What each kind's `spec` may hold, as data: the decoder takes its field lists from here, and
//! the CRDs' openAPIV3Schema and the editors' JSON Schema are rendered from it.
//!
//! One source of truth for the shape of a document: field names, which are required, their
//! types, enum values, integer ranges (the same constants `validate` checks) and defaults (the
//! values of policy.rs). What a schema cannot say (cross-field and cross-document rules, name
//! resolution) stays in `validate`. The tests in `schema/tests.rs` drive the decoder with a
//! document made from every field, then break each field in turn, so the two cannot drift.
//!
//! `specs` holds the tables, `render` turns them into JSON Schema and CustomResourceDefinitions.

mod render;
mod specs;
#[cfg(test)]
mod tests;

use std::ops::RangeInclusive;

pub use render::{crd, crds, json_schema};
pub(crate) use specs::*;

/// Where weft.dev kinds live in Kubernetes.
pub const GROUP: &str = "weft.dev";
pub const VERSION: &str = "v1alpha1";

/// A mapping with a fixed set of fields.
#[derive(Debug)]
pub struct Object {
    pub fields: &'static [Field],
}

impl Object {
    /// The field names, for the decoder's unknown-field check and its suggestions.
    pub fn names(&self) -> Vec<&'static str> {
        self.fields.iter().map(|f| f.name).collect()
    }

    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// One field of an [`Object`].
#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub ty: Type,
    pub required: bool,
    /// The value an omitted field takes, as the decoder fills it in (rendered as JSON).
    pub default: Option<fn() -> serde_json::Value>,
    /// One line for `kubectl explain` and editors' hover text.
    pub doc: &'static str,
}

impl Field {
    pub(crate) const fn new(name: &'static str, ty: Type, doc: &'static str) -> Field {
        Field { name, ty, required: false, default: None, doc }
    }

    pub(crate) const fn required(mut self) -> Field {
        self.required = true;
        self
    }

    pub(crate) const fn default(mut self, value: fn() -> serde_json::Value) -> Field {
        self.default = Some(value);
        self
    }
}

/// The type of a field's value, with the constraints a schema can express.
#[derive(Debug)]
pub enum Type {
    Text(Text),
    /// A whole number in the range (`validate`'s constants).
    Integer(&'static RangeInclusive<i128>),
    /// A number from 0 to 1.
    Ratio,
    Boolean,
    /// `250ms`, `2s`, `1m30s`, `1h`.
    Duration,
    /// `IP:PORT`, `[IPv6]:PORT` for IPv6.
    Address,
    /// An IP address with no port.
    Ip,
    /// One of these names.
    Enum(&'static [&'static str]),
    List(&'static Type),
    Object(&'static Object),
    /// Open-ended names to string values (header matches).
    StringMap,
}

/// The kinds of text fields, each with the rule `validate` applies to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Text {
    /// Any non-empty text (file paths).
    NonEmpty,
    /// An RFC 1123 label (`check_name`).
    Name,
    /// `NAME` or `NAME.NAMESPACE` (`check_service_ref`).
    ServiceRef,
    /// Starts with `/`.
    HttpPath,
    /// An HTTP method token; lower case is accepted and upper-cased.
    Method,
    /// `spiffe://TRUST-DOMAIN/ns/NS/sa/ACCOUNT`.
    SpiffeId,
    TrustDomain,
    /// `http[s]://HOST:PORT`.
    Url,
    /// A `tracing` filter.
    LogLevel,
}

/// A kind as Kubernetes knows it: names, the spec's fields and what `kubectl get` shows.
#[derive(Debug)]
pub struct Kind {
    pub name: &'static str,
    pub plural: &'static str,
    pub short_names: &'static [&'static str],
    pub spec: &'static Object,
    /// Extra `kubectl get` columns: (header, JSONPath, description).
    pub columns: &'static [(&'static str, &'static str, &'static str)],
    pub doc: &'static str,
}

impl Kind {
    /// Whether `spec` must be written: it has a required field.
    pub fn spec_required(&self) -> bool {
        self.spec.fields.iter().any(|f| f.required)
    }
}

/// The kind named `name`, if Weft has it.
pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// Kind names in the order they are documented.
pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
}
