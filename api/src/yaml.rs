//! A YAML node tree that remembers the line of every node (built from saphyr-parser events).
