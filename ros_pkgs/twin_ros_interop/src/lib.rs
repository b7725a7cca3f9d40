//! Conformance between twinlink's ROS-free message codec (`twinlink-msgs`) and ROS 2 itself.
//!
//! For every message type, [`registry`] pairs the twinlink type with r2r's generated type
//! (which serializes through `rmw_serialize`, i.e. Fast CDR, exactly as any ROS 2 node does).
//! [`check_against_rcl`] proves for one value that both produce the same bytes and each
//! decodes the other's; [`TypeSupport::check_wire`] does the same for bytes received from
//! another process. Values cross between the two type systems as JSON: both derive serde with
//! the same field names, so no per-message conversion code exists to drift.

use r2r::WrappedTypesupport;
use serde_json::Value;
use twinlink_msgs::{codec, layout, Message};

/// Checks one value: our bytes equal rcl's outside alignment padding (which Fast CDR leaves
/// uninitialized), rcl decodes our bytes to the same value, and we decode rcl's bytes to it.
pub fn check_against_rcl<M, R>(value: &M) -> Result<(), String>
where
    M: Message,
    R: WrappedTypesupport + PartialEq,
{
    let ours = codec::encode(value).map_err(|e| e.to_string())?;
    let theirs_value: R = convert(value)?;
    let theirs = theirs_value
        .to_serialized_bytes()
        .map_err(|e| format!("{}: rmw_serialize failed: {e}", M::TYPE_NAME))?;
    if let Some(at) = layout::first_difference_ignoring_padding(value, &ours, &theirs) {
        return Err(format!(
            "{}: bytes differ at offset {at} (twinlink {} bytes, rcl {} bytes)\n  twinlink: {}\n  rcl:      {}",
            M::TYPE_NAME,
            ours.len(),
            theirs.len(),
            hex_around(&ours, at),
            hex_around(&theirs, at)
        ));
    }
    let rcl_from_ours = R::from_serialized_bytes(&ours)
        .map_err(|e| format!("{}: rcl cannot decode twinlink's bytes: {e}", M::TYPE_NAME))?;
    if rcl_from_ours != theirs_value {
        return Err(format!(
            "{}: rcl decoded twinlink's bytes to a different value:\n  expected {theirs_value:?}\n  got      {rcl_from_ours:?}",
            M::TYPE_NAME
        ));
    }
    let ours_from_rcl: M =
        codec::decode(&theirs).map_err(|e| format!("twinlink cannot decode rcl's bytes: {e}"))?;
    if &ours_from_rcl != value {
        return Err(format!(
            "{}: twinlink decoded rcl's bytes to a different value:\n  expected {value:?}\n  got      {ours_from_rcl:?}",
            M::TYPE_NAME
        ));
    }
    Ok(())
}

/// Moves a value between the twinlink and r2r type systems through JSON.
pub fn convert<A: serde::Serialize, B: serde::de::DeserializeOwned>(
    value: &A,
) -> Result<B, String> {
    let json = serde_json::to_value(value).map_err(|e| format!("to JSON: {e}"))?;
    serde_json::from_value(json).map_err(|e| format!("from JSON: {e}"))
}

fn hex_around(bytes: &[u8], at: usize) -> String {
    let start = at.saturating_sub(8);
    let end = (at + 8).min(bytes.len());
    bytes[start.min(end)..end]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if start + i == at {
                format!("[{b:02x}]")
            } else {
                format!("{b:02x}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What twinlink knows about one message type, usable with the type chosen at run time.
pub struct TypeSupport {
    /// ROS type name, e.g. `twin_msgs/msg/VehicleState`.
    pub type_name: &'static str,
    check_wire: fn(&Value, &[u8]) -> Result<(), String>,
    check_value: fn(&Value) -> Result<(), String>,
}

impl TypeSupport {
    /// Checks bytes received from another ROS 2 process against the value they should carry
    /// (as JSON): twinlink decodes them to that value, rcl decodes them to it too, and the bytes
    /// equal twinlink's encoding of it outside padding.
    pub fn check_wire(&self, expected: &Value, wire: &[u8]) -> Result<(), String> {
        (self.check_wire)(expected, wire)
    }

    /// Runs [`check_against_rcl`] on a value given as JSON.
    pub fn check_value(&self, value: &Value) -> Result<(), String> {
        (self.check_value)(value)
    }
}

fn check_wire_for<M, R>(expected: &Value, wire: &[u8]) -> Result<(), String>
where
    M: Message,
    R: WrappedTypesupport + PartialEq,
{
    let expected: M = serde_json::from_value(expected.clone())
        .map_err(|e| format!("{}: expected value is not valid: {e}", M::TYPE_NAME))?;
    let decoded: M = codec::decode(wire).map_err(|e| e.to_string())?;
    if decoded != expected {
        return Err(format!(
            "{}: received a different value:\n  expected {expected:?}\n  got      {decoded:?}",
            M::TYPE_NAME
        ));
    }
    let ours = codec::encode(&expected).map_err(|e| e.to_string())?;
    if let Some(at) = layout::first_difference_ignoring_padding(&expected, &ours, wire) {
        return Err(format!(
            "{}: received bytes differ from twinlink's encoding at offset {at}\n  twinlink: {}\n  wire:     {}",
            M::TYPE_NAME,
            hex_around(&ours, at),
            hex_around(wire, at)
        ));
    }
    let rcl: R = R::from_serialized_bytes(wire).map_err(|e| {
        format!(
            "{}: rcl cannot decode the received bytes: {e}",
            M::TYPE_NAME
        )
    })?;
    let rcl_expected: R = convert(&expected)?;
    if rcl != rcl_expected {
        return Err(format!("{}: rcl decoded a different value", M::TYPE_NAME));
    }
    Ok(())
}

fn check_value_for<M, R>(value: &Value) -> Result<(), String>
where
    M: Message,
    R: WrappedTypesupport + PartialEq,
{
    let value: M = serde_json::from_value(value.clone())
        .map_err(|e| format!("{}: value is not valid: {e}", M::TYPE_NAME))?;
    check_against_rcl::<M, R>(&value)
}

macro_rules! registry_entries {
    ($( [ $($segment:ident)::+ ] ),* $(,)?) => {
        vec![$(
            TypeSupport {
                type_name: <twinlink_msgs::$($segment)::+ as Message>::TYPE_NAME,
                check_wire: check_wire_for::<twinlink_msgs::$($segment)::+, r2r::$($segment)::+>,
                check_value: check_value_for::<twinlink_msgs::$($segment)::+, r2r::$($segment)::+>,
            }
        ),*]
    };
}

/// Every message type twinlink defines, paired with r2r's.
pub fn registry() -> Vec<TypeSupport> {
    twinlink_msgs::all_message_types!(registry_entries)
}

/// Looks a type up by its ROS name.
pub fn find(type_name: &str) -> Option<TypeSupport> {
    registry().into_iter().find(|t| t.type_name == type_name)
}

/// Topic name for a message type in the interop exchange, e.g. `twin_msgs_msg_VehicleState`.
pub fn topic_suffix(type_name: &str) -> String {
    type_name.replace('/', "_")
}
