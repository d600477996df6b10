//! The native protocol's command decoder (`switchboard_proto::decode_commands`) on arbitrary
//! frames, and the encoders on what it decoded.
//!
//! Besides "never panics": a decoded frame has at most `MAX_COMMANDS_PER_FRAME` commands, and
//! pushes and replies built from decoded strings and client data (channel names, `data`, error
//! messages) are valid JSON that gives those strings back.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchboard_proto::{
    decode_commands, encode_custom_error_reply, encode_message_push, encode_publication_push,
    encode_unsubscribe_push, ClientInfo, Method, Publication, RawValue, MAX_COMMANDS_PER_FRAME,
};

/// Checks the encoder's output is JSON (as serde_json checks client data: `RawValue`, which lets
/// lone surrogate escapes such as `"\udfff"` through, as client data may contain them) and
/// returns it as a tree when one can be built: not when client data in it has lone surrogates,
/// nor when it nests deeper than serde_json's tree limit (128).
fn json(bytes: &[u8]) -> Option<Value> {
    if let Err(e) = serde_json::from_slice::<Box<RawValue>>(bytes) {
        panic!(
            "encoder wrote invalid JSON ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    serde_json::from_slice(bytes).ok()
}

/// Client data parsed as a tree, when serde_json can build one.
fn tree(raw: &RawValue) -> Option<Value> {
    serde_json::from_str(raw.get()).ok()
}

/// Whether `raw` nests deeper than `limit` arrays and objects.
fn deeper_than(raw: &str, limit: usize) -> bool {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for b in raw.bytes() {
        match (in_str, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_str = false,
            (true, false, _) => {}
            (false, _, b'"') => in_str = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn check_publication(channel: &str, data: Option<&RawValue>, user: &str) {
    let data: Box<RawValue> = match data {
        Some(d) => d.to_owned(),
        None => RawValue::from_string("null".into()).expect("null is JSON"),
    };
    let publication = Publication {
        data: data.clone(),
        info: Some(ClientInfo {
            user: user.to_owned(),
            client: "c".into(),
            conn_info: Some(data.clone()),
            chan_info: None,
        }),
        offset: 7,
        tags: HashMap::from([(channel.to_owned(), user.to_owned())]),
    };
    let push = encode_publication_push(channel, &publication);
    let pushed = json(&push);
    let message = json(&encode_message_push(&data));
    // Compare trees when the data has one and is shallow enough to have one inside the push.
    if let Some(expected) = tree(&data).filter(|_| !deeper_than(data.get(), 120)) {
        let v = pushed.expect("a push of tree-shaped data is a tree");
        assert_eq!(v["push"]["channel"], channel);
        assert_eq!(v["push"]["pub"]["data"], expected);
        assert_eq!(v["push"]["pub"]["info"]["user"], user);
        assert_eq!(v["push"]["pub"]["tags"][channel], user);
        let v = message.expect("a message of tree-shaped data is a tree");
        assert_eq!(v["push"]["message"]["data"], expected);
    }
    let v = json(&encode_unsubscribe_push(channel, 2500, user)).expect("strings only");
    assert_eq!(v["push"]["unsubscribe"]["reason"], user);
    let v = json(&encode_custom_error_reply(u32::MAX, 4000, channel, true)).expect("strings only");
    assert_eq!(v["error"]["message"], channel);
}

fuzz_target!(|data: &[u8]| {
    let Ok(commands) = decode_commands(data) else {
        return;
    };
    assert!(commands.len() <= MAX_COMMANDS_PER_FRAME);
    let mut user = String::new();
    for cmd in &commands {
        let Ok(method) = cmd.method() else {
            continue;
        };
        let _ = method.name();
        match method {
            Method::Connect(c) => user.clone_from(&c.token),
            Method::Subscribe(s) => check_publication(&s.channel, s.data.as_deref(), &user),
            Method::Publish(p) => check_publication(&p.channel, p.data.as_deref(), &user),
            Method::Rpc(r) => check_publication(&r.method, r.data.as_deref(), &user),
            Method::Send(s) => check_publication("", s.data.as_deref(), &user),
            Method::History(h) => {
                let epoch = h.since.as_ref().map(|s| s.epoch.as_str()).unwrap_or("");
                check_publication(&h.channel, None, epoch);
            }
            _ => {}
        }
    }
});
