//! Identifier and literal quoting.
//!
//! Every identifier pg-rekey puts into SQL goes through [`quote_ident`]; every
//! value is bound as a parameter, except in the few DDL statements that cannot
//! take parameters, where [`quote_literal`] is used.

/// Quote an identifier the way PostgreSQL's `quote_ident` does, always.
///
/// Always quoting is never wrong and keeps mixed case, spaces and embedded
/// double quotes intact.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quote a string literal (standard_conforming_strings on, the default since 9.1).
pub fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A schema-qualified table name.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct QualifiedName {
    /// Schema (namespace) name, unquoted.
    pub schema: String,
    /// Relation name, unquoted.
    pub name: String,
}

impl QualifiedName {
    /// Build from the two unquoted parts.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// `"schema"."name"`, ready to paste into SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// Parse an operator-typed name: `table`, `schema.table`, or either part in
    /// double quotes (`"My Schema"."My ""T"""`). Unquoted parts fold to lower case
    /// as PostgreSQL does. With no schema, `default_schema` is used.
    pub fn parse(text: &str, default_schema: &str) -> Result<Self, String> {
        let parts = split_ident_path(text)?;
        match parts.as_slice() {
            [name] => Ok(QualifiedName::new(default_schema, name.clone())),
            [schema, name] => Ok(QualifiedName::new(schema.clone(), name.clone())),
            _ => Err(format!(
                "table name {text:?} has {} dotted parts; write it as table or schema.table (quote parts that contain dots)",
                parts.len()
            )),
        }
    }
}

impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Human form: quote only where needed, so logs read naturally.
        let part = |s: &str| {
            let plain = !s.is_empty()
                && s.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
            if plain {
                s.to_string()
            } else {
                quote_ident(s)
            }
        };
        write!(f, "{}.{}", part(&self.schema), part(&self.name))
    }
}

fn split_ident_path(text: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(format!("unterminated quoted identifier in {text:?}")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return Err(format!("empty identifier in {text:?}"));
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(c) => {
                return Err(format!(
                    "unexpected {c:?} after quoted identifier in {text:?}"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("users"), "\"users\"");
        assert_eq!(quote_ident("My \"T\""), "\"My \"\"T\"\"\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn parses_names() {
        assert_eq!(
            QualifiedName::parse("Users", "public").unwrap(),
            QualifiedName::new("public", "users")
        );
        assert_eq!(
            QualifiedName::parse("app.t", "public").unwrap(),
            QualifiedName::new("app", "t")
        );
        assert_eq!(
            QualifiedName::parse("\"My S\".\"a.\"\"b\"", "public").unwrap(),
            QualifiedName::new("My S", "a.\"b")
        );
        assert!(QualifiedName::parse("a.b.c", "public").is_err());
        assert!(QualifiedName::parse("\"open", "public").is_err());
        assert!(QualifiedName::parse("a..b", "public").is_err());
    }

    #[test]
    fn displays_minimally_quoted() {
        assert_eq!(
            QualifiedName::new("public", "users").to_string(),
            "public.users"
        );
        assert_eq!(
            QualifiedName::new("public", "My T").to_string(),
            "public.\"My T\""
        );
    }
}
