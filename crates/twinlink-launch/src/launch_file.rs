//! A reader for ROS 2 XML launch files (the `ros2 launch` XML front end), enough to bring
//! twinlink's vehicle graph up where `ros2 launch` is not installed.
//!
//! Supported: `<launch>`, `<arg name default>`, `<let name value>`, `<group>` (scoped),
//! `if` / `unless` on any element,
//! `<push-ros-namespace namespace>` (also `push_ros_namespace`), `<include file>` with
//! `<arg name value>` children, and `<node pkg exec name namespace args respawn>` with
//! `<param name value>`, `<param from>`, `<remap from to>` and `<env name value>` children.
//! Substitutions: `$(var name)`, `$(env NAME)`, `$(env NAME default)`,
//! `$(find-pkg-share pkg)` and `$(dirname)`. Anything else is refused with an error that
//! names the file, the element and what is not supported, rather than being ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};

/// One node to start, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLaunch {
    /// Package (`pkg`).
    pub package: String,
    /// Executable name (`exec`).
    pub executable: String,
    /// Node name (`name`), if renamed.
    pub name: Option<String>,
    /// Namespace: pushed namespaces and the node's own, e.g. `/car_1`.
    pub namespace: String,
    /// Parameter files, in order.
    pub param_files: Vec<PathBuf>,
    /// Single parameters, in order (`name`, value as written).
    pub params: Vec<(String, String)>,
    /// Topic and service remappings, in order.
    pub remaps: Vec<(String, String)>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Extra command-line arguments before `--ros-args`.
    pub args: Vec<String>,
    /// Restart the node when it exits.
    pub respawn: bool,
}

impl NodeLaunch {
    /// The node's command-line arguments, as `ros2 launch` passes them.
    pub fn ros_args(&self) -> Vec<String> {
        let mut out = self.args.clone();
        out.push("--ros-args".into());
        if let Some(name) = &self.name {
            out.extend(["-r".into(), format!("__node:={name}")]);
        }
        if self.namespace != "/" && !self.namespace.is_empty() {
            out.extend(["-r".into(), format!("__ns:={}", self.namespace)]);
        }
        for file in &self.param_files {
            out.extend(["--params-file".into(), file.display().to_string()]);
        }
        for (name, value) in &self.params {
            out.extend(["-p".into(), format!("{name}:={value}")]);
        }
        for (from, to) in &self.remaps {
            out.extend(["-r".into(), format!("{from}:={to}")]);
        }
        out
    }
}

/// Where packages' share directories are: a package `p` is found at `<root>/p` for the
/// first root that has it (for the workspace, `ros_pkgs/`), or through `AMENT_PREFIX_PATH`
/// as `<prefix>/share/p`.
#[derive(Debug, Clone)]
pub struct PackageIndex {
    roots: Vec<PathBuf>,
}

impl PackageIndex {
    /// Looks in `roots`, then in every `AMENT_PREFIX_PATH` entry's `share/`.
    pub fn new(roots: Vec<PathBuf>) -> Self {
        let mut roots = roots;
        if let Some(ament) = std::env::var_os("AMENT_PREFIX_PATH") {
            roots.extend(std::env::split_paths(&ament).map(|p| p.join("share")));
        }
        PackageIndex { roots }
    }

    /// The share directory of `package`.
    pub fn share(&self, package: &str) -> Result<PathBuf> {
        self.roots
            .iter()
            .map(|r| r.join(package))
            .find(|p| p.join("package.xml").exists())
            .ok_or_else(|| anyhow!("package {package:?} not found (looked in {:?})", self.roots))
    }
}

struct Scope {
    vars: BTreeMap<String, String>,
    namespace: Vec<String>,
}

/// Reads `file` with the launch arguments `args` (`name` -> value) and returns the nodes
/// it starts. Arguments without a default must be given.
pub fn load(
    file: &Path,
    args: &BTreeMap<String, String>,
    index: &PackageIndex,
) -> Result<Vec<NodeLaunch>> {
    let file = &file
        .canonicalize()
        .with_context(|| format!("launch file {}", file.display()))?;
    let mut nodes = Vec::new();
    let mut scope = Scope {
        vars: BTreeMap::new(),
        namespace: Vec::new(),
    };
    load_into(file, args, index, &mut scope, &mut nodes, 0)?;
    Ok(nodes)
}

fn load_into(
    file: &Path,
    args: &BTreeMap<String, String>,
    index: &PackageIndex,
    scope: &mut Scope,
    nodes: &mut Vec<NodeLaunch>,
    depth: usize,
) -> Result<()> {
    if depth > 16 {
        bail!("{}: includes nest deeper than 16 levels", file.display());
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading launch file {}", file.display()))?;
    let doc = roxmltree::Document::parse(&text)
        .with_context(|| format!("{} is not well-formed XML", file.display()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "launch" {
        bail!(
            "{}: the root element is <{}>, expected <launch>",
            file.display(),
            root.tag_name().name()
        );
    }
    let ctx = FileContext { file, index };
    // Arguments given from outside take precedence over defaults.
    let outer_vars = std::mem::take(&mut scope.vars);
    scope.vars = args.clone();
    walk(root, &ctx, scope, nodes, depth)?;
    scope.vars = outer_vars;
    Ok(())
}

struct FileContext<'a> {
    file: &'a Path,
    index: &'a PackageIndex,
}

impl FileContext<'_> {
    fn error(&self, node: roxmltree::Node, message: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "{}: <{}>: {message}",
            self.file.display(),
            node.tag_name().name()
        )
    }

    fn attr(&self, node: roxmltree::Node, name: &str, scope: &Scope) -> Result<Option<String>> {
        node.attribute(name)
            .map(|v| self.substitute(node, v, scope))
            .transpose()
    }

    fn required(&self, node: roxmltree::Node, name: &str, scope: &Scope) -> Result<String> {
        self.attr(node, name, scope)?
            .ok_or_else(|| self.error(node, format!("attribute {name:?} is required")))
    }

    fn substitute(&self, node: roxmltree::Node, text: &str, scope: &Scope) -> Result<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("$(") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find(')')
                .map(|e| start + e)
                .ok_or_else(|| self.error(node, format!("unclosed substitution in {text:?}")))?;
            let inner = &rest[start + 2..end];
            let mut words = inner.split_whitespace();
            let kind = words.next().unwrap_or_default();
            let value = match kind {
                "var" => {
                    let name = words
                        .next()
                        .ok_or_else(|| self.error(node, "$(var) needs a name"))?;
                    scope.vars.get(name).cloned().ok_or_else(|| {
                        self.error(node, format!("launch argument {name:?} is not set"))
                    })?
                }
                "env" => {
                    let name = words
                        .next()
                        .ok_or_else(|| self.error(node, "$(env) needs a name"))?;
                    let default: Vec<&str> = words.collect();
                    match std::env::var(name) {
                        Ok(v) => v,
                        Err(_) if !default.is_empty() => default.join(" "),
                        Err(_) => {
                            return Err(
                                self.error(node, format!("environment variable {name} is not set"))
                            )
                        }
                    }
                }
                "find-pkg-share" => {
                    let package = words
                        .next()
                        .ok_or_else(|| self.error(node, "$(find-pkg-share) needs a package"))?;
                    self.index
                        .share(package)
                        .map_err(|e| self.error(node, e))?
                        .display()
                        .to_string()
                }
                "dirname" => self
                    .file
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| ".".into()),
                other => {
                    return Err(self.error(
                        node,
                        format!("substitution $({other} ...) is not supported by this runner"),
                    ))
                }
            };
            out.push_str(&value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

fn namespace_of(scope: &Scope, own: Option<&str>) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for ns in scope.namespace.iter().map(String::as_str).chain(own) {
        if ns.starts_with('/') {
            parts.clear();
        }
        parts.extend(ns.split('/').filter(|p| !p.is_empty()));
    }
    format!("/{}", parts.join("/"))
}

/// Evaluates `if` / `unless` on an element: true if it applies.
fn condition(element: roxmltree::Node, ctx: &FileContext, scope: &Scope) -> Result<bool> {
    let truth = |attr: &str| -> Result<Option<bool>> {
        match ctx.attr(element, attr, scope)? {
            None => Ok(None),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(Some(true)),
                "false" | "0" => Ok(Some(false)),
                other => Err(ctx.error(
                    element,
                    format!("{attr}=\"{other}\" is not true, false, 1 or 0"),
                )),
            },
        }
    };
    Ok(truth("if")?.unwrap_or(true) && !truth("unless")?.unwrap_or(false))
}

fn walk(
    element: roxmltree::Node,
    ctx: &FileContext,
    scope: &mut Scope,
    nodes: &mut Vec<NodeLaunch>,
    depth: usize,
) -> Result<()> {
    for child in element.children().filter(|n| n.is_element()) {
        if !condition(child, ctx, scope)? {
            continue;
        }
        match child.tag_name().name() {
            "arg" => {
                let name = ctx.required(child, "name", scope)?;
                if !scope.vars.contains_key(&name) {
                    match ctx.attr(child, "default", scope)? {
                        Some(default) => {
                            scope.vars.insert(name, default);
                        }
                        None => {
                            return Err(ctx.error(child, format!("launch argument {name:?} has no default; give it as {name}:=<value>")))
                        }
                    }
                }
            }
            "let" => {
                let name = ctx.required(child, "name", scope)?;
                let value = ctx.required(child, "value", scope)?;
                scope.vars.insert(name, value);
            }
            "group" => {
                let saved_vars = scope.vars.clone();
                let saved_ns = scope.namespace.len();
                walk(child, ctx, scope, nodes, depth)?;
                scope.namespace.truncate(saved_ns);
                if child.attribute("scoped") != Some("false") {
                    scope.vars = saved_vars;
                }
            }
            "push-ros-namespace" | "push_ros_namespace" => {
                let ns = ctx.required(child, "namespace", scope)?;
                scope.namespace.push(ns);
            }
            "include" => {
                let file = PathBuf::from(ctx.required(child, "file", scope)?);
                let mut args = scope.vars.clone();
                for a in child.children().filter(|n| n.is_element()) {
                    if a.tag_name().name() != "arg" {
                        return Err(
                            ctx.error(a, "only <arg name value> may appear inside <include>")
                        );
                    }
                    args.insert(
                        ctx.required(a, "name", scope)?,
                        ctx.required(a, "value", scope)?,
                    );
                }
                let outer = std::mem::take(&mut scope.vars);
                let saved_ns = scope.namespace.clone();
                load_into(&file, &args, ctx.index, scope, nodes, depth + 1)?;
                scope.namespace = saved_ns;
                scope.vars = outer;
            }
            "node" => nodes.push(node_of(child, ctx, scope)?),
            other => {
                return Err(ctx.error(
                    child,
                    format!("element <{other}> is not supported by this runner"),
                ))
            }
        }
    }
    Ok(())
}

fn node_of(element: roxmltree::Node, ctx: &FileContext, scope: &Scope) -> Result<NodeLaunch> {
    let own_ns = ctx.attr(element, "namespace", scope)?;
    let mut node = NodeLaunch {
        package: ctx.required(element, "pkg", scope)?,
        executable: ctx.required(element, "exec", scope)?,
        name: ctx.attr(element, "name", scope)?,
        namespace: namespace_of(scope, own_ns.as_deref()),
        param_files: Vec::new(),
        params: Vec::new(),
        remaps: Vec::new(),
        env: Vec::new(),
        args: ctx
            .attr(element, "args", scope)?
            .map(|a| a.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
        respawn: ctx.attr(element, "respawn", scope)?.as_deref() == Some("true"),
    };
    for child in element.children().filter(|n| n.is_element()) {
        match child.tag_name().name() {
            "param" => match (
                ctx.attr(child, "from", scope)?,
                ctx.attr(child, "name", scope)?,
            ) {
                (Some(file), _) => {
                    let path = PathBuf::from(&file);
                    if !path.exists() {
                        return Err(
                            ctx.error(child, format!("parameter file {file} does not exist"))
                        );
                    }
                    node.param_files.push(path);
                }
                (None, Some(name)) => {
                    let value = ctx.required(child, "value", scope)?;
                    node.params.push((name, value));
                }
                (None, None) => {
                    return Err(ctx.error(child, "needs either from=\"file\" or name and value"))
                }
            },
            "remap" => node.remaps.push((
                ctx.required(child, "from", scope)?,
                ctx.required(child, "to", scope)?,
            )),
            "env" => node.env.push((
                ctx.required(child, "name", scope)?,
                ctx.required(child, "value", scope)?,
            )),
            other => {
                return Err(ctx.error(
                    child,
                    format!("element <{other}> inside <node> is not supported by this runner"),
                ))
            }
        }
    }
    Ok(node)
}

/// Parses `name:=value` launch arguments.
pub fn parse_launch_args<'a>(
    items: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, String>> {
    items
        .into_iter()
        .map(|item| {
            item.split_once(":=")
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("launch argument {item:?} is not of the form name:=value"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn temp_dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("twinlaunch_{label}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pkgs/demo_pkg/config")).unwrap();
        std::fs::write(dir.join("pkgs/demo_pkg/package.xml"), "<package/>").unwrap();
        std::fs::write(
            dir.join("pkgs/demo_pkg/config/p.yaml"),
            "/**:\n  ros__parameters: {}\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn nodes_namespaces_params_remaps_and_includes_resolve() {
        let dir = temp_dir("resolve");
        write(
            &dir,
            "base.launch.xml",
            r#"<launch>
                 <arg name="vehicle" default="ego"/>
                 <arg name="lidar_topic" default="lidar/points"/>
                 <arg name="use_skipped" default="false"/>
                 <group>
                   <push-ros-namespace namespace="$(var vehicle)"/>
                   <node pkg="demo_pkg" exec="lidar_summarizer" name="lidar">
                     <param from="$(find-pkg-share demo_pkg)/config/p.yaml"/>
                     <param name="max_range" value="80.0"/>
                     <remap from="lidar/points" to="$(var lidar_topic)"/>
                   </node>
                 </group>
                 <node pkg="demo_pkg" exec="other" namespace="/fleet"/>
                 <node pkg="demo_pkg" exec="skipped" if="$(var use_skipped)"/>
               </launch>"#,
        );
        let top = write(
            &dir,
            "carla.launch.xml",
            r#"<launch>
                 <arg name="role" default="hero"/>
                 <include file="$(dirname)/base.launch.xml">
                   <arg name="lidar_topic" value="/carla/$(var role)/lidar"/>
                 </include>
               </launch>"#,
        );
        let index = PackageIndex {
            roots: vec![dir.join("pkgs")],
        };
        let args = parse_launch_args(["vehicle:=car_7"]).unwrap();
        let nodes = load(&top, &args, &index).unwrap();
        assert_eq!(nodes.len(), 2);
        let lidar = &nodes[0];
        assert_eq!(lidar.namespace, "/car_7");
        assert_eq!(
            lidar.remaps,
            vec![("lidar/points".to_string(), "/carla/hero/lidar".to_string())]
        );
        assert_eq!(
            lidar.ros_args(),
            vec![
                "--ros-args",
                "-r",
                "__node:=lidar",
                "-r",
                "__ns:=/car_7",
                "--params-file",
                &dir.join("pkgs/demo_pkg/config/p.yaml")
                    .display()
                    .to_string(),
                "-p",
                "max_range:=80.0",
                "-r",
                "lidar/points:=/carla/hero/lidar",
            ]
        );
        assert_eq!(nodes[1].namespace, "/fleet");
    }

    #[test]
    fn what_is_not_supported_is_named_not_ignored() {
        let dir = temp_dir("unsupported");
        let index = PackageIndex {
            roots: vec![dir.join("pkgs")],
        };
        let none = BTreeMap::new();
        let f = write(
            &dir,
            "a.launch.xml",
            r#"<launch><timer period="1"/></launch>"#,
        );
        assert!(load(&f, &none, &index)
            .unwrap_err()
            .to_string()
            .contains("element <timer> is not supported"));
        let f = write(
            &dir,
            "b.launch.xml",
            r#"<launch><node pkg="demo_pkg" exec="x" name="$(eval 1+1)"/></launch>"#,
        );
        assert!(load(&f, &none, &index)
            .unwrap_err()
            .to_string()
            .contains("$(eval ...) is not supported"));
        let f = write(
            &dir,
            "c.launch.xml",
            r#"<launch><arg name="key_file"/></launch>"#,
        );
        assert!(load(&f, &none, &index)
            .unwrap_err()
            .to_string()
            .contains("\"key_file\" has no default"));
        let f = write(
            &dir,
            "d.launch.xml",
            r#"<launch><node pkg="nope" exec="x"><param from="$(find-pkg-share nope)/p.yaml"/></node></launch>"#,
        );
        assert!(load(&f, &none, &index)
            .unwrap_err()
            .to_string()
            .contains("package \"nope\" not found"));
        assert!(parse_launch_args(["vehicle=car"]).is_err());
    }
}
