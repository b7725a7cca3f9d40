//! Parser for ROS 2 interface definitions (`.msg` and `.srv` files).
//!
//! This module is compiled twice: by the build script, which generates the Rust message types
//! from `msgs/`, and into the library, so tests can parse the installed ROS definitions and
//! compare them with the ones twinlink builds from. It depends on `std` only.
//!
//! The accepted grammar is the ROS 2 `.msg` format: one field (`TYPE NAME [DEFAULT]`) or
//! constant (`TYPE NAME=VALUE`) per line, `#` comments, array suffixes `[]`, `[N]`, `[<=N]`,
//! bounded strings `string<=N`, and `pkg/Type` or same-package `Type` references.

use std::fmt;

/// A primitive ROS 2 type, as it appears in a `.msg` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Primitive {
    /// `bool`: one byte, 0 or 1.
    Bool,
    /// `byte`: an opaque octet.
    Byte,
    /// `char`: an 8-bit character (an octet).
    Char,
    /// `float32`.
    Float32,
    /// `float64`.
    Float64,
    /// `int8`.
    Int8,
    /// `uint8`.
    Uint8,
    /// `int16`.
    Int16,
    /// `uint16`.
    Uint16,
    /// `int32`.
    Int32,
    /// `uint32`.
    Uint32,
    /// `int64`.
    Int64,
    /// `uint64`.
    Uint64,
    /// `string`: UTF-8 text.
    String,
}

impl Primitive {
    /// Parses a primitive type name; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "bool" => Self::Bool,
            "byte" => Self::Byte,
            "char" => Self::Char,
            "float32" => Self::Float32,
            "float64" => Self::Float64,
            "int8" => Self::Int8,
            "uint8" => Self::Uint8,
            "int16" => Self::Int16,
            "uint16" => Self::Uint16,
            "int32" => Self::Int32,
            "uint32" => Self::Uint32,
            "int64" => Self::Int64,
            "uint64" => Self::Uint64,
            "string" => Self::String,
            _ => return None,
        })
    }

    /// The name used in `.msg` files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Byte => "byte",
            Self::Char => "char",
            Self::Float32 => "float32",
            Self::Float64 => "float64",
            Self::Int8 => "int8",
            Self::Uint8 => "uint8",
            Self::Int16 => "int16",
            Self::Uint16 => "uint16",
            Self::Int32 => "int32",
            Self::Uint32 => "uint32",
            Self::Int64 => "int64",
            Self::Uint64 => "uint64",
            Self::String => "string",
        }
    }

    /// The Rust type that holds a value of this primitive.
    pub fn rust_type(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Byte | Self::Char | Self::Uint8 => "u8",
            Self::Float32 => "f32",
            Self::Float64 => "f64",
            Self::Int8 => "i8",
            Self::Int16 => "i16",
            Self::Uint16 => "u16",
            Self::Int32 => "i32",
            Self::Uint32 => "u32",
            Self::Int64 => "i64",
            Self::Uint64 => "u64",
            Self::String => "String",
        }
    }

    /// Size and CDR alignment in bytes; `None` for strings (length-prefixed).
    pub fn cdr_size(self) -> Option<usize> {
        match self {
            Self::Bool | Self::Byte | Self::Char | Self::Int8 | Self::Uint8 => Some(1),
            Self::Int16 | Self::Uint16 => Some(2),
            Self::Float32 | Self::Int32 | Self::Uint32 => Some(4),
            Self::Float64 | Self::Int64 | Self::Uint64 => Some(8),
            Self::String => None,
        }
    }

    /// True for the octet types whose sequences are carried as raw bytes.
    pub fn is_octet(self) -> bool {
        matches!(self, Self::Byte | Self::Char | Self::Uint8)
    }
}

/// The element type of a field: a primitive or another message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BaseType {
    /// A primitive; `string_bound` is the `N` of `string<=N`.
    Primitive {
        /// Which primitive.
        kind: Primitive,
        /// Maximum string length in bytes, for bounded strings.
        string_bound: Option<usize>,
    },
    /// A message type, fully qualified.
    Message {
        /// Package, e.g. `geometry_msgs`.
        package: String,
        /// Message name, e.g. `Pose`.
        name: String,
    },
}

impl fmt::Display for BaseType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Primitive {
                kind,
                string_bound: None,
            } => f.write_str(kind.name()),
            Self::Primitive {
                kind,
                string_bound: Some(n),
            } => write!(f, "{}<={n}", kind.name()),
            Self::Message { package, name } => write!(f, "{package}/{name}"),
        }
    }
}

/// How many elements a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arity {
    /// One value.
    Single,
    /// `T[N]`: exactly N values, no length on the wire.
    Fixed(usize),
    /// `T[]`: any number, u32 length on the wire.
    Unbounded,
    /// `T[<=N]`: at most N, u32 length on the wire.
    Bounded(usize),
}

/// One field of a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Field name as written in the file.
    pub name: String,
    /// Element type.
    pub base: BaseType,
    /// Single value or array kind.
    pub arity: Arity,
    /// Default value literal, if the file gives one.
    pub default: Option<String>,
    /// The comment on the field's line (without `#`), used as documentation.
    pub doc: String,
}

/// A named constant of a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Constant {
    /// Constant name.
    pub name: String,
    /// Its primitive type.
    pub kind: Primitive,
    /// Value literal as written (strings without quotes).
    pub value: String,
    /// The comment on the constant's line.
    pub doc: String,
}

/// A parsed message definition.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageDef {
    /// Package that owns the message.
    pub package: String,
    /// Message name (for service parts: `Name_Request` / `Name_Response`).
    pub name: String,
    /// Fields in wire order.
    pub fields: Vec<Field>,
    /// Constants in file order.
    pub constants: Vec<Constant>,
    /// The leading comment block, used as documentation.
    pub doc: String,
}

impl MessageDef {
    /// ROS type name, e.g. `twin_msgs/msg/VehicleState`.
    pub fn type_name(&self, kind: &str) -> String {
        format!("{}/{}/{}", self.package, kind, self.name)
    }
}

/// A parsed service definition.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDef {
    /// Service name.
    pub name: String,
    /// The request message (`Name_Request`).
    pub request: MessageDef,
    /// The response message (`Name_Response`).
    pub response: MessageDef,
}

/// An error in an interface file, with the line it was found on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Splits a line into its content and its comment (text after the first `#` that is not
/// inside a quoted string).
fn split_comment(line: &str) -> (&str, &str) {
    let mut quote: Option<char> = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') => return (&line[..i], line[i + 1..].trim()),
            _ => {}
        }
    }
    (line, "")
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_count(text: &str, line: usize, what: &str) -> Result<usize, ParseError> {
    text.trim().parse::<usize>().map_err(|_| ParseError {
        line,
        message: format!("{what} `{text}` is not a non-negative integer"),
    })
}

/// Parses a type token such as `float64[36]`, `string<=8`, `Point[]`, `std_msgs/Header`.
fn parse_type(token: &str, package: &str, line: usize) -> Result<(BaseType, Arity), ParseError> {
    let (base_text, arity) = match token.find('[') {
        Some(open) => {
            let Some(inner) = token[open + 1..].strip_suffix(']') else {
                return Err(ParseError {
                    line,
                    message: format!("array type `{token}` has no closing `]`"),
                });
            };
            let arity = if inner.is_empty() {
                Arity::Unbounded
            } else if let Some(bound) = inner.strip_prefix("<=") {
                Arity::Bounded(parse_count(bound, line, "array bound")?)
            } else {
                Arity::Fixed(parse_count(inner, line, "array size")?)
            };
            (&token[..open], arity)
        }
        None => (token, Arity::Single),
    };
    let (name, string_bound) = match base_text.split_once("<=") {
        Some((name, bound)) => (name, Some(parse_count(bound, line, "string bound")?)),
        None => (base_text, None),
    };
    if let Some(kind) = Primitive::from_name(name) {
        if string_bound.is_some() && kind != Primitive::String {
            return Err(ParseError {
                line,
                message: format!("only strings take a `<=` bound, not `{name}`"),
            });
        }
        return Ok((BaseType::Primitive { kind, string_bound }, arity));
    }
    if name == "wstring" || name == "time" || name == "duration" {
        return Err(ParseError {
            line,
            message: format!("type `{name}` is not supported (use string or builtin_interfaces)"),
        });
    }
    if string_bound.is_some() {
        return Err(ParseError {
            line,
            message: format!("only strings take a `<=` bound, not `{name}`"),
        });
    }
    let (pkg, msg) = match name.split_once('/') {
        Some((pkg, msg)) => (pkg.to_string(), msg.to_string()),
        // `Header` alone has always meant std_msgs/Header.
        None if name == "Header" => ("std_msgs".to_string(), "Header".to_string()),
        None => (package.to_string(), name.to_string()),
    };
    if !is_identifier(&pkg) || !is_identifier(&msg) {
        return Err(ParseError {
            line,
            message: format!("`{name}` is not a valid type name"),
        });
    }
    Ok((
        BaseType::Message {
            package: pkg,
            name: msg,
        },
        arity,
    ))
}

/// Parses the text of a `.msg` file (or one half of a `.srv` file).
///
/// `first_line` is the 1-based line number of `text`'s first line in its file, so errors point
/// at the right line of a `.srv` response.
pub fn parse_message(
    package: &str,
    name: &str,
    text: &str,
    first_line: usize,
) -> Result<MessageDef, ParseError> {
    let mut def = MessageDef {
        package: package.to_string(),
        name: name.to_string(),
        fields: Vec::new(),
        constants: Vec::new(),
        doc: String::new(),
    };
    // The documentation of a message is its first block of comment lines.
    let mut header_done = false;
    let mut header_doc: Vec<&str> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = first_line + index;
        let (content, comment) = split_comment(raw);
        let content = content.trim();
        if content.is_empty() {
            if !header_done {
                if raw.trim().is_empty() {
                    header_done = !header_doc.is_empty();
                } else {
                    header_doc.push(comment);
                }
            }
            continue;
        }
        header_done = true;
        let (type_token, rest) =
            content
                .split_once(char::is_whitespace)
                .ok_or_else(|| ParseError {
                    line,
                    message: format!("`{content}` needs a type and a name"),
                })?;
        let rest = rest.trim();
        let (base, arity) = parse_type(type_token, package, line)?;
        // Constant: NAME=VALUE (spaces around `=` allowed).
        if let Some((cname, value)) = rest.split_once('=') {
            let cname = cname.trim();
            let BaseType::Primitive { kind, .. } = base else {
                return Err(ParseError {
                    line,
                    message: format!("constant `{cname}` must have a primitive type"),
                });
            };
            if arity != Arity::Single {
                return Err(ParseError {
                    line,
                    message: format!("constant `{cname}` cannot be an array"),
                });
            }
            if !is_identifier(cname) {
                return Err(ParseError {
                    line,
                    message: format!("`{cname}` is not a valid constant name"),
                });
            }
            let mut value = value.trim().to_string();
            if kind == Primitive::String {
                value = unquote(&value);
            }
            def.constants.push(Constant {
                name: cname.to_string(),
                kind,
                value,
                doc: comment.to_string(),
            });
            continue;
        }
        let (fname, default) = match rest.split_once(char::is_whitespace) {
            Some((fname, default)) => (fname, Some(default.trim().to_string())),
            None => (rest, None),
        };
        if !is_identifier(fname) || fname.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ParseError {
                line,
                message: format!("`{fname}` is not a valid field name (lower_snake_case)"),
            });
        }
        if def.fields.iter().any(|f| f.name == fname) {
            return Err(ParseError {
                line,
                message: format!("field `{fname}` is defined twice"),
            });
        }
        if default.is_some() && !matches!(base, BaseType::Primitive { .. }) {
            return Err(ParseError {
                line,
                message: format!("field `{fname}`: only primitive fields can have a default"),
            });
        }
        def.fields.push(Field {
            name: fname.to_string(),
            base,
            arity,
            default,
            doc: comment.to_string(),
        });
    }
    def.doc = header_doc.join("\n").trim().to_string();
    Ok(def)
}

fn unquote(value: &str) -> String {
    let v = value.trim();
    if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

/// Parses the text of a `.srv` file: request and response separated by a `---` line.
pub fn parse_service(package: &str, name: &str, text: &str) -> Result<ServiceDef, ParseError> {
    let lines: Vec<&str> = text.lines().collect();
    let separators: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim() == "---")
        .map(|(i, _)| i)
        .collect();
    let [sep] = separators[..] else {
        return Err(ParseError {
            line: separators.get(1).map_or(lines.len(), |i| i + 1),
            message: format!(
                "a service needs exactly one `---` line, found {}",
                separators.len()
            ),
        });
    };
    let request_text = lines[..sep].join("\n");
    let response_text = lines[sep + 1..].join("\n");
    Ok(ServiceDef {
        name: name.to_string(),
        request: parse_message(package, &format!("{name}_Request"), &request_text, 1)?,
        response: parse_message(
            package,
            &format!("{name}_Response"),
            &response_text,
            sep + 2,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_constants_arrays_and_defaults() {
        let text = "# Doc line\n\nuint8 A = 1 # first\nstring S=\"hi # there\"\nfloat64[36] cov\nPoint[] pts\nstd_msgs/Header header\nHeader h2\nstring<=8 short\nint32[<=4] few 0\nfloat64 w 1 # unit\n";
        let def = parse_message("geometry_msgs", "X", text, 1).unwrap();
        assert_eq!(def.doc, "Doc line");
        assert_eq!(def.constants.len(), 2);
        assert_eq!(def.constants[0].value, "1");
        assert_eq!(def.constants[0].doc, "first");
        assert_eq!(def.constants[1].value, "hi # there");
        assert_eq!(def.fields[0].arity, Arity::Fixed(36));
        assert_eq!(
            def.fields[1].base,
            BaseType::Message {
                package: "geometry_msgs".into(),
                name: "Point".into()
            }
        );
        assert_eq!(def.fields[1].arity, Arity::Unbounded);
        assert_eq!(def.fields[2].base, def.fields[3].base);
        assert_eq!(
            def.fields[4].base,
            BaseType::Primitive {
                kind: Primitive::String,
                string_bound: Some(8)
            }
        );
        assert_eq!(def.fields[5].arity, Arity::Bounded(4));
        assert_eq!(def.fields[6].default.as_deref(), Some("1"));
        assert_eq!(def.fields[6].doc, "unit");
    }

    #[test]
    fn rejects_bad_lines_with_their_line_number() {
        let cases = [
            ("float64", 1, "needs a type and a name"),
            ("uint8 x\nfloat64[abc] y", 2, "array size"),
            ("uint8 x\nuint8 x", 2, "defined twice"),
            ("Point p 3", 1, "only primitive fields can have a default"),
            ("wstring w", 1, "not supported"),
            ("uint8 Bad", 1, "lower_snake_case"),
            ("float64[3 x", 1, "closing"),
            ("uint32<=3 x", 1, "only strings"),
        ];
        for (text, line, needle) in cases {
            let err = parse_message("p", "M", text, 1).unwrap_err();
            assert_eq!(err.line, line, "{text}: {err}");
            assert!(err.message.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn parses_services_and_reports_response_lines() {
        let srv = parse_service("p", "S", "uint8 a\n---\nbool ok\nfloat64[x] bad").unwrap_err();
        assert_eq!(srv.line, 4);
        let srv = parse_service("p", "S", "# nothing in\n---\nbool ok\n").unwrap();
        assert!(srv.request.fields.is_empty());
        assert_eq!(srv.response.name, "S_Response");
        assert!(parse_service("p", "S", "uint8 a").is_err());
        assert!(parse_service("p", "S", "---\n---").is_err());
    }
}
