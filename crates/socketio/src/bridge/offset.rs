//! The connection state recovery offset: the string a socket.io client keeps (the last string
//! argument of every event) and sends back when it reconnects. It lists the socket's rooms
//! (channels) with the last position seen in each.

use std::collections::BTreeMap;

/// Longest offset string accepted from a client.
const MAX_OFFSET_LEN: usize = 64 * 1024;

/// The offset string: the socket's rooms (channels) with their positions, base64url JSON (so
/// it needs no escaping inside a JSON string).
///
/// Written straight into one buffer (no `Value`): every event of a socket with recovery carries
/// one, so it is on the fan-out's path.
pub(super) fn encode_offset(positions: &BTreeMap<String, (u64, String)>) -> String {
    use base64::Engine as _;
    let mut list = Vec::with_capacity(64);
    list.push(b'[');
    for (i, (channel, (offset, epoch))) in positions.iter().enumerate() {
        if i > 0 {
            list.push(b',');
        }
        serde_json::to_writer(&mut list, &(channel, offset, epoch))
            .expect("serialising into a Vec does not fail");
    }
    list.push(b']');
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(list)
}

/// Decodes an offset string (`None` when malformed or too long).
pub(super) fn decode_offset(s: &str) -> Option<BTreeMap<String, (u64, String)>> {
    use base64::Engine as _;
    if s.len() > MAX_OFFSET_LEN {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    let list: Vec<(String, u64, String)> = serde_json::from_slice(&bytes).ok()?;
    Some(list.into_iter().map(|(c, o, e)| (c, (o, e))).collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn offsets_are_the_json_list_of_rooms() {
        use base64::Engine as _;
        let mut p = BTreeMap::new();
        assert_eq!(encode_offset(&p), "W10"); // []
        p.insert("a\"b".to_owned(), (7, "e1".to_owned()));
        p.insert("c".to_owned(), (0, String::new()));
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encode_offset(&p))
            .unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            json!([["a\"b", 7, "e1"], ["c", 0, ""]]).to_string()
        );
    }

    #[test]
    fn offsets_round_trip_and_refuse_garbage() {
        let mut p = BTreeMap::new();
        p.insert("chat:a".to_owned(), (7, "ep".to_owned()));
        assert_eq!(decode_offset(&encode_offset(&p)), Some(p));
        assert_eq!(decode_offset("!!"), None);
        assert_eq!(decode_offset(&"A".repeat(MAX_OFFSET_LEN + 1)), None);
    }
}
