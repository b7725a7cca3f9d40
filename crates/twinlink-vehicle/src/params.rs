//! Node parameters: declared once with a default, a range and a description, validated at
//! start with errors that name the parameter.
//!
//! The ROS layer turns whatever `--ros-args -p` and `--params-file` gave into a
//! [`Given`] map; [`resolve`] checks it against a node's [`ParamSpec`] table and fills in
//! defaults. Integers are accepted where a double is declared (YAML writes `10` for 10.0).

use std::collections::BTreeMap;
use std::fmt;

/// A parameter's value.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// `true` / `false`.
    Bool(bool),
    /// A 64-bit integer.
    Int(i64),
    /// A double.
    Double(f64),
    /// A string.
    Str(String),
}

impl ParamValue {
    fn type_name(&self) -> &'static str {
        match self {
            ParamValue::Bool(_) => "bool",
            ParamValue::Int(_) => "integer",
            ParamValue::Double(_) => "double",
            ParamValue::Str(_) => "string",
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Double(d) => write!(f, "{d}"),
            ParamValue::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// One declared parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Name, e.g. `cluster_tolerance`.
    pub name: &'static str,
    /// Default value (its type is the parameter's type).
    pub default: ParamValue,
    /// Inclusive range of a numeric parameter.
    pub range: Option<(f64, f64)>,
    /// Allowed values of a string parameter (empty: any).
    pub choices: &'static [&'static str],
    /// What it does, with its unit.
    pub description: &'static str,
}

impl ParamSpec {
    /// A double in `[min, max]`.
    pub const fn double(
        name: &'static str,
        default: f64,
        min: f64,
        max: f64,
        description: &'static str,
    ) -> Self {
        ParamSpec {
            name,
            default: ParamValue::Double(default),
            range: Some((min, max)),
            choices: &[],
            description,
        }
    }

    /// An integer in `[min, max]`.
    pub const fn int(
        name: &'static str,
        default: i64,
        min: i64,
        max: i64,
        description: &'static str,
    ) -> Self {
        ParamSpec {
            name,
            default: ParamValue::Int(default),
            range: Some((min as f64, max as f64)),
            choices: &[],
            description,
        }
    }

    /// A boolean.
    pub const fn bool(name: &'static str, default: bool, description: &'static str) -> Self {
        ParamSpec {
            name,
            default: ParamValue::Bool(default),
            range: None,
            choices: &[],
            description,
        }
    }

    /// A string (any value when `choices` is empty).
    pub fn string(
        name: &'static str,
        default: &str,
        choices: &'static [&'static str],
        description: &'static str,
    ) -> Self {
        ParamSpec {
            name,
            default: ParamValue::Str(default.to_string()),
            range: None,
            choices,
            description,
        }
    }

    /// The range or choices as README text, e.g. `[0.05, 2]`.
    pub fn range_text(&self) -> String {
        match (&self.range, self.choices.is_empty()) {
            (Some((lo, hi)), _) => format!("[{lo}, {hi}]"),
            (None, false) => self.choices.join(", "),
            (None, true) => String::new(),
        }
    }
}

/// Values given to a node, by name.
pub type Given = BTreeMap<String, ParamValue>;

/// One problem with the given parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamError {
    /// The parameter.
    pub name: String,
    /// What is wrong.
    pub problem: String,
}

/// Every problem found, all reported at once.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid parameters: {}", .0.iter().map(|e| format!("parameter '{}': {}", e.name, e.problem)).collect::<Vec<_>>().join("; "))]
pub struct ParamErrors(pub Vec<ParamError>);

/// Parameters every ROS 2 node accepts without declaring them.
const ROS_BUILTIN: &[&str] = &["use_sim_time", "start_type_description_service"];

/// Validated values of every declared parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    values: BTreeMap<&'static str, ParamValue>,
}

impl Params {
    /// A double (or an integer read as a double).
    pub fn f64(&self, name: &str) -> f64 {
        match self.get(name) {
            ParamValue::Double(d) => *d,
            ParamValue::Int(i) => *i as f64,
            other => panic!(
                "parameter {name} is declared {}, read as double",
                other.type_name()
            ),
        }
    }

    /// A double as f32.
    pub fn f32(&self, name: &str) -> f32 {
        self.f64(name) as f32
    }

    /// An integer.
    pub fn i64(&self, name: &str) -> i64 {
        match self.get(name) {
            ParamValue::Int(i) => *i,
            other => panic!(
                "parameter {name} is declared {}, read as integer",
                other.type_name()
            ),
        }
    }

    /// A non-negative integer as usize.
    pub fn usize(&self, name: &str) -> usize {
        self.i64(name).max(0) as usize
    }

    /// A boolean.
    pub fn bool(&self, name: &str) -> bool {
        match self.get(name) {
            ParamValue::Bool(b) => *b,
            other => panic!(
                "parameter {name} is declared {}, read as bool",
                other.type_name()
            ),
        }
    }

    /// A string.
    pub fn str(&self, name: &str) -> &str {
        match self.get(name) {
            ParamValue::Str(s) => s,
            other => panic!(
                "parameter {name} is declared {}, read as string",
                other.type_name()
            ),
        }
    }

    /// Every value, for logging at start and for the parameter services.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &ParamValue)> {
        self.values.iter().map(|(k, v)| (*k, v))
    }

    fn get(&self, name: &str) -> &ParamValue {
        self.values
            .get(name)
            .unwrap_or_else(|| panic!("parameter {name} is not declared"))
    }
}

/// Checks `given` against `specs`: unknown names (with the nearest declared name), wrong
/// types, values out of range or not among the choices, non-finite doubles.
pub fn resolve(specs: &[ParamSpec], given: &Given) -> Result<Params, ParamErrors> {
    let mut errors = Vec::new();
    for name in given.keys() {
        if ROS_BUILTIN.contains(&name.as_str()) || specs.iter().any(|s| s.name == name) {
            continue;
        }
        let nearest = specs
            .iter()
            .map(|s| (edit_distance(s.name, name), s.name))
            .min()
            .filter(|(d, _)| *d <= 3)
            .map(|(_, n)| format!(" (did you mean '{n}'?)"))
            .unwrap_or_default();
        errors.push(ParamError {
            name: name.clone(),
            problem: format!("is not a parameter of this node{nearest}"),
        });
    }
    let mut values = BTreeMap::new();
    for spec in specs {
        let value = match given.get(spec.name) {
            None => spec.default.clone(),
            Some(v) => match check(spec, v) {
                Ok(v) => v,
                Err(problem) => {
                    errors.push(ParamError {
                        name: spec.name.to_string(),
                        problem,
                    });
                    continue;
                }
            },
        };
        values.insert(spec.name, value);
    }
    if errors.is_empty() {
        Ok(Params { values })
    } else {
        Err(ParamErrors(errors))
    }
}

fn check(spec: &ParamSpec, value: &ParamValue) -> Result<ParamValue, String> {
    let value = match (&spec.default, value) {
        (ParamValue::Double(_), ParamValue::Int(i)) => ParamValue::Double(*i as f64),
        (d, v) if std::mem::discriminant(d) == std::mem::discriminant(v) => v.clone(),
        (d, v) => {
            return Err(format!(
                "expected {}, got {} {v}",
                d.type_name(),
                v.type_name()
            ))
        }
    };
    let number = match &value {
        ParamValue::Double(d) => Some(*d),
        ParamValue::Int(i) => Some(*i as f64),
        _ => None,
    };
    if let Some(x) = number {
        if !x.is_finite() {
            return Err(format!("{value} is not a finite number"));
        }
        if let Some((lo, hi)) = spec.range {
            if x < lo || x > hi {
                return Err(format!("{value} is outside the range [{lo}, {hi}]"));
            }
        }
    }
    if let ParamValue::Str(s) = &value {
        if !spec.choices.is_empty() && !spec.choices.contains(&s.as_str()) {
            return Err(format!("{value} is not one of {}", spec.choices.join(", ")));
        }
    }
    Ok(value)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The parameter table of a package README (name, type, default, range, description).
pub fn markdown_table(specs: &[ParamSpec]) -> String {
    let mut out =
        String::from("| Name | Type | Default | Range | Description |\n|---|---|---|---|---|\n");
    for s in specs {
        out.push_str(&format!(
            "| `{}` | {} | `{}` | {} | {} |\n",
            s.name,
            s.default.type_name(),
            s.default,
            s.range_text(),
            s.description
        ));
    }
    out
}

/// The parameters of a sensor's mounting on the vehicle (`mount_x` ... `mount_yaw`).
pub fn mounting_specs(default: crate::geometry::Mounting) -> Vec<ParamSpec> {
    vec![
        ParamSpec::double(
            "mount_x",
            default.x,
            -20.0,
            20.0,
            "sensor position in base_link, forward [m]",
        ),
        ParamSpec::double(
            "mount_y",
            default.y,
            -5.0,
            5.0,
            "sensor position in base_link, left [m]",
        ),
        ParamSpec::double(
            "mount_z",
            default.z,
            -2.0,
            6.0,
            "sensor position in base_link, up [m]",
        ),
        ParamSpec::double(
            "mount_roll",
            default.roll,
            -std::f64::consts::PI,
            std::f64::consts::PI,
            "sensor roll about x [rad]",
        ),
        ParamSpec::double(
            "mount_pitch",
            default.pitch,
            -std::f64::consts::FRAC_PI_2,
            std::f64::consts::FRAC_PI_2,
            "sensor pitch about y [rad]",
        ),
        ParamSpec::double(
            "mount_yaw",
            default.yaw,
            -std::f64::consts::PI,
            std::f64::consts::PI,
            "sensor yaw about z [rad]",
        ),
    ]
}

/// Reads the mounting parameters declared by [`mounting_specs`].
pub fn mounting_from(p: &Params) -> crate::geometry::Mounting {
    crate::geometry::Mounting {
        x: p.f64("mount_x"),
        y: p.f64("mount_y"),
        z: p.f64("mount_z"),
        roll: p.f64("mount_roll"),
        pitch: p.f64("mount_pitch"),
        yaw: p.f64("mount_yaw"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<ParamSpec> {
        vec![
            ParamSpec::double("max_range", 100.0, 1.0, 300.0, "[m]"),
            ParamSpec::int("min_points", 5, 1, 1000, "points"),
            ParamSpec::bool("debug_markers", true, "publish markers"),
            ParamSpec::string("layout", "auto", &["auto", "carla", "plain"], "layout"),
        ]
    }

    #[test]
    fn defaults_fill_in_and_integers_are_doubles() {
        let mut given = Given::new();
        given.insert("max_range".into(), ParamValue::Int(150));
        given.insert("use_sim_time".into(), ParamValue::Bool(true));
        let p = resolve(&specs(), &given).unwrap();
        assert_eq!(p.f64("max_range"), 150.0);
        assert_eq!(p.usize("min_points"), 5);
        assert!(p.bool("debug_markers"));
        assert_eq!(p.str("layout"), "auto");
    }

    #[test]
    fn every_problem_is_named() {
        let mut given = Given::new();
        given.insert("max_range".into(), ParamValue::Double(500.0));
        given.insert("min_points".into(), ParamValue::Str("many".into()));
        given.insert("layout".into(), ParamValue::Str("velodyne".into()));
        given.insert("max_rnage".into(), ParamValue::Double(1.0));
        given.insert("debug_markers".into(), ParamValue::Bool(false));
        let e = resolve(&specs(), &given).unwrap_err();
        let text = e.to_string();
        assert_eq!(e.0.len(), 4, "{text}");
        assert!(
            text.contains("parameter 'max_range': 500 is outside the range [1, 300]"),
            "{text}"
        );
        assert!(
            text.contains("parameter 'min_points': expected integer, got string \"many\""),
            "{text}"
        );
        assert!(
            text.contains("parameter 'layout': \"velodyne\" is not one of auto, carla, plain"),
            "{text}"
        );
        assert!(text.contains("parameter 'max_rnage': is not a parameter of this node (did you mean 'max_range'?)"), "{text}");
        let mut nan = Given::new();
        nan.insert("max_range".into(), ParamValue::Double(f64::NAN));
        assert!(resolve(&specs(), &nan)
            .unwrap_err()
            .to_string()
            .contains("not a finite number"));
    }

    #[test]
    fn readme_table_lists_each_parameter() {
        let t = markdown_table(&specs());
        assert!(
            t.contains("| `max_range` | double | `100` | [1, 300] | [m] |"),
            "{t}"
        );
        assert!(
            t.contains("| `layout` | string | `\"auto\"` | auto, carla, plain | layout |"),
            "{t}"
        );
    }
}
