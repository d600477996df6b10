//! Channel names and their namespaces.

use std::collections::HashMap;

use switchboard_proto::ErrorCode;

use crate::config::{ChannelConfig, NamespaceOptions};

/// Separates a channel's namespace from the rest of its name: `chat:room1`.
pub const NAMESPACE_SEPARATOR: char = ':';

/// Resolves channel names to their namespace options.
#[derive(Debug)]
pub(crate) struct Namespaces {
    default: NamespaceOptions,
    named: HashMap<String, NamespaceOptions>,
    allow_unknown: bool,
    max_length: usize,
    /// Channels every client is subscribed to when it connects (`subscribe_on_connect`).
    pub(crate) on_connect: Vec<String>,
}

impl Namespaces {
    pub(crate) fn new(config: &ChannelConfig) -> Self {
        Self {
            default: config.default.clone(),
            named: config.index(),
            allow_unknown: config.allow_unknown_namespaces,
            max_length: config.max_length,
            on_connect: config.connect_channels(),
        }
    }

    /// The options that apply to `channel`, or error 102 when the name is invalid or its
    /// namespace is unknown.
    pub(crate) fn resolve(&self, channel: &str) -> Result<&NamespaceOptions, ErrorCode> {
        if channel.is_empty()
            || channel.len() > self.max_length
            || channel.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ErrorCode::UNKNOWN_CHANNEL);
        }
        match channel.split_once(NAMESPACE_SEPARATOR) {
            None => Ok(&self.default),
            Some((ns, _)) => match self.named.get(ns) {
                Some(options) => Ok(options),
                None if self.allow_unknown => Ok(&self.default),
                None => Err(ErrorCode::UNKNOWN_CHANNEL),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allow_unknown: bool) -> ChannelConfig {
        let mut c = ChannelConfig::default();
        c.allow_unknown_namespaces = allow_unknown;
        let mut chat = NamespaceOptions::default();
        chat.name = "chat".into();
        chat.allow_publish_for_client = true;
        c.namespaces.push(chat);
        c.max_length = 16;
        c
    }

    #[test]
    fn resolves_namespaces() {
        let ns = Namespaces::new(&config(false));
        assert!(ns.resolve("chat:1").unwrap().allow_publish_for_client);
        assert!(!ns.resolve("plain").unwrap().allow_publish_for_client);
        assert_eq!(
            ns.resolve("other:1").unwrap_err(),
            ErrorCode::UNKNOWN_CHANNEL
        );
        assert!(ns.resolve("").is_err());
        assert!(ns.resolve("has space").is_err());
        assert!(ns.resolve("waytoolongchannelname").is_err());
        let ns = Namespaces::new(&config(true));
        assert!(!ns.resolve("other:1").unwrap().allow_publish_for_client);
    }
}
