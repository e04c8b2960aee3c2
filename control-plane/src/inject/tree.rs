//! An owned YAML tree the injector edits: mappings keep their order, scalars keep whether they
//! were plain (so `8080` stays a number and `"8080"` a string when written back).

use weft_api::yaml::{Node, Value};

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Yaml {
    /// A plain scalar as written (`8080`, `true`, `web`, `null`): its type is the reader's call.
    Plain(String),
    /// A string, whatever it looks like.
    Str(String),
    Seq(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    /// Converts a parsed node. Mapping keys must be scalars (they always are in Kubernetes
    /// manifests); anything else is refused rather than mangled.
    pub(crate) fn from_node(node: &Node) -> Result<Yaml, String> {
        Ok(match &node.value {
            Value::Scalar(s) if s.quoted => Yaml::Str(s.text.clone()),
            Value::Scalar(s) => Yaml::Plain(s.text.clone()),
            Value::Sequence(items) => Yaml::Seq(items.iter().map(Yaml::from_node).collect::<Result<_, _>>()?),
            Value::Mapping(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let Value::Scalar(key) = &k.value else {
                        return Err(format!("line {}: a mapping key that is not a scalar is not supported", k.line));
                    };
                    out.push((key.text.clone(), Yaml::from_node(v)?));
                }
                Yaml::Map(out)
            }
        })
    }

    /// A JSON value as YAML: strings stay strings whatever they look like (`weft crds` writes
    /// its JSON objects with the injector's writer).
    pub(crate) fn from_json(value: &serde_json::Value) -> Yaml {
        use serde_json::Value as Json;
        match value {
            Json::Null => Yaml::Plain("null".to_string()),
            Json::Bool(b) => Yaml::Plain(b.to_string()),
            Json::Number(n) => Yaml::Plain(n.to_string()),
            Json::String(s) => Yaml::Str(s.clone()),
            Json::Array(items) => Yaml::Seq(items.iter().map(Yaml::from_json).collect()),
            Json::Object(entries) => Yaml::Map(entries.iter().map(|(k, v)| (k.clone(), Yaml::from_json(v))).collect()),
        }
    }

    pub(crate) fn str(s: impl Into<String>) -> Yaml {
        Yaml::Str(s.into())
    }

    pub(crate) fn int(n: impl Into<i64>) -> Yaml {
        Yaml::Plain(n.into().to_string())
    }

    pub(crate) fn map<const N: usize>(entries: [(&str, Yaml); N]) -> Yaml {
        Yaml::Map(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    /// The scalar's text, plain or quoted.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Yaml::Plain(s) | Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A YAML boolean (`true`, `True`, `TRUE`) written plain.
    pub(crate) fn is_true(&self) -> bool {
        matches!(self, Yaml::Plain(s) if s.eq_ignore_ascii_case("true"))
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follows a path of mapping keys.
    pub(crate) fn path(&self, keys: &[&str]) -> Option<&Yaml> {
        keys.iter().try_fold(self, |node, k| node.get(k))
    }

    pub(crate) fn path_mut(&mut self, keys: &[&str]) -> Option<&mut Yaml> {
        keys.iter().try_fold(self, |node, k| node.get_mut(k))
    }

    /// The value at `key`, created (as `default`, at the end or at `position`) when missing.
    /// `None` when `self` is not a mapping.
    pub(crate) fn entry(&mut self, key: &str, default: Yaml, position: Option<usize>) -> Option<&mut Yaml> {
        let Yaml::Map(entries) = self else { return None };
        let i = match entries.iter().position(|(k, _)| k == key) {
            Some(i) => i,
            None => {
                let at = position.unwrap_or(entries.len()).min(entries.len());
                entries.insert(at, (key.to_string(), default));
                at
            }
        };
        Some(&mut entries[i].1)
    }

    /// Sets `key` in place, or appends it.
    pub(crate) fn set(&mut self, key: &str, value: Yaml) {
        if let Some(slot) = self.entry(key, Yaml::Plain(String::new()), None) {
            *slot = value;
        }
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<Yaml> {
        let Yaml::Map(entries) = self else { return None };
        let i = entries.iter().position(|(k, _)| k == key)?;
        Some(entries.remove(i).1)
    }

    pub(crate) fn items(&self) -> &[Yaml] {
        match self {
            Yaml::Seq(items) => items,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Yaml {
        Yaml::from_node(&weft_api::yaml::parse_stream(text).documents[0]).unwrap()
    }

    #[test]
    fn scalars_keep_their_style_and_mappings_their_order() {
        let y = parse("b: 8080\na: \"8080\"\nc: [x]\n");
        assert_eq!(
            y,
            Yaml::Map(vec![
                ("b".into(), Yaml::Plain("8080".into())),
                ("a".into(), Yaml::Str("8080".into())),
                ("c".into(), Yaml::Seq(vec![Yaml::Plain("x".into())])),
            ])
        );
    }

    #[test]
    fn entry_creates_missing_keys_where_asked() {
        let mut y = parse("kind: Pod\nspec: {}\n");
        y.entry("metadata", Yaml::Map(vec![]), Some(1)).unwrap().set("name", Yaml::str("p"));
        assert_eq!(y.path(&["metadata", "name"]).and_then(Yaml::as_str), Some("p"));
        let Yaml::Map(e) = &y else { panic!() };
        assert_eq!(e.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["kind", "metadata", "spec"]);
        assert_eq!(y.remove("spec"), Some(Yaml::Map(vec![])));
        assert!(y.get("spec").is_none());
    }

    #[test]
    fn complex_keys_are_refused() {
        let node = &weft_api::yaml::parse_stream("? [a, b]\n: c\n").documents[0];
        assert!(Yaml::from_node(node).unwrap_err().contains("not a scalar"));
    }
}
