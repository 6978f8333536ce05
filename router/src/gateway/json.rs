//! etcd's JSON: the proto3 JSON mapping as etcd's gateway configures it
//! (original proto field names, fields at their default value left out,
//! 64-bit integers as strings, enums by name, bytes as base64), done by
//! `prost-reflect` over the descriptor set; and the gateway's error bodies.

use http::StatusCode;
use prost::Message as _;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, SerializeOptions,
};
use tonic::Code;

/// At most this many messages from one client-streaming request body.
pub const MAX_STREAM_REQUESTS: usize = 1024;

fn ser_options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true)
        .stringify_64_bit_integers(true)
        .use_enum_numbers(false)
}

/// etcd's gateway ignores fields it does not know.
fn de_options() -> DeserializeOptions {
    DeserializeOptions::new().deny_unknown_fields(false)
}

/// The encoded request messages a body holds. A unary call takes the first
/// JSON value (etcd ignores what follows it; an empty body or `null` is the
/// empty message); a client stream takes every value, one after another
/// (none for an empty body).
pub fn parse_requests(
    desc: &MessageDescriptor,
    body: &[u8],
    stream: bool,
) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    // serde_json bounds nesting (128 levels), so no body recurses deeply.
    for value in serde_json::Deserializer::from_slice(body).into_iter::<serde_json::Value>() {
        let value = value.map_err(|e| e.to_string())?;
        let msg = if value.is_null() {
            DynamicMessage::new(desc.clone())
        } else {
            check_enums(desc, &value)?;
            DynamicMessage::deserialize_with_options(desc.clone(), value, &de_options())
                .map_err(|e| e.to_string())?
        };
        out.push(msg.encode_to_vec());
        if !stream {
            break;
        }
        if out.len() > MAX_STREAM_REQUESTS {
            return Err(format!(
                "strata: more than {MAX_STREAM_REQUESTS} messages in one request body"
            ));
        }
    }
    if out.is_empty() && !stream {
        out.push(Vec::new());
    }
    Ok(out)
}

/// Refuses an enum value given by a name the enum lacks, as etcd does
/// (prost-reflect, told to ignore unknown fields, ignores those too).
fn check_enums(desc: &MessageDescriptor, value: &serde_json::Value) -> Result<(), String> {
    let Some(obj) = value.as_object() else {
        return Ok(());
    };
    for (name, v) in obj {
        let Some(field) = desc
            .get_field_by_name(name)
            .or_else(|| desc.get_field_by_json_name(name))
        else {
            continue;
        };
        if field.is_map() {
            continue;
        }
        let items: Vec<&serde_json::Value> = match v.as_array() {
            Some(a) if field.is_list() => a.iter().collect(),
            _ => vec![v],
        };
        match field.kind() {
            Kind::Enum(e) => {
                for item in items {
                    if let Some(s) = item.as_str() {
                        if e.get_value_by_name(s).is_none() {
                            return Err(format!("unknown value {item} for enum {}", e.full_name()));
                        }
                    }
                }
            }
            Kind::Message(m) => {
                for item in items {
                    check_enums(&m, item)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// One encoded `desc` message as etcd's JSON.
pub fn render(desc: &MessageDescriptor, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let msg = DynamicMessage::decode(desc.clone(), bytes)
        .map_err(|e| format!("strata: cannot decode {}: {e}", desc.full_name()))?;
    let mut out = Vec::with_capacity(bytes.len() * 2 + 16);
    let mut ser = serde_json::Serializer::new(&mut out);
    msg.serialize_with_options(&mut ser, &ser_options())
        .map_err(|e| format!("strata: cannot write {} as JSON: {e}", desc.full_name()))?;
    Ok(out)
}

/// One message of a streamed answer: `{"result":<message>}` and a newline.
pub fn stream_result(desc: &MessageDescriptor, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let msg = render(desc, bytes)?;
    let mut out = Vec::with_capacity(msg.len() + 12);
    out.extend_from_slice(b"{\"result\":");
    out.extend_from_slice(&msg);
    out.extend_from_slice(b"}\n");
    Ok(out)
}

/// The HTTP status etcd's gateway answers a gRPC code with.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
    }
}

fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The body of a failed unary call: `{"error":m,"message":m,"code":n}`.
pub fn error_body(code: Code, message: &str) -> Vec<u8> {
    let m = quoted(message);
    format!("{{\"error\":{m},\"message\":{m},\"code\":{}}}", code as i32).into_bytes()
}

/// The message ending a streamed answer that failed:
/// `{"error":{"grpc_code":..,"http_code":..,"message":..,"http_status":..}}`.
pub fn stream_error(code: Code, message: &str) -> Vec<u8> {
    let http = http_status(code);
    format!(
        "{{\"error\":{{\"grpc_code\":{},\"http_code\":{},\"message\":{},\"http_status\":{}}}}}\n",
        code as i32,
        http.as_u16(),
        quoted(message),
        quoted(http.canonical_reason().unwrap_or("")),
    )
    .into_bytes()
}
