//! Collaborative editor: documents `demo-editor:<doc>` kept as a [`crdt::Doc`] on the server.
//! Pages send their edits with the RPC `editor.ops {doc, ops}`; the server applies them (repeats
//! are dropped, so a page resends safely after a reconnect) and publishes the new ones, in the
//! order it applied them, to the document's channel. A page starts from `editor.state {doc}`.
//! Cursors go to `demo-editor-cursor:<doc>` (published by the pages, checked here); presence of
//! the document's channel says who is here.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard::config::NamespaceOptions;
use switchboard::{Data, HandlerResult, Node, PublishReply, Rejection, RpcReply};
use tokio::sync::Mutex;

use crate::crdt::{Doc, Elem, Op};
use crate::{invalid, open_namespace, valid_id};

/// Documents.
pub(crate) const NAMESPACE: &str = "demo-editor";
/// Cursors of a document's editors.
pub(crate) const CURSOR_NAMESPACE: &str = "demo-editor-cursor";
/// Limits: documents per node, elements per document (tombstones included), ops per call.
const MAX_DOCS: usize = 50;
const MAX_ELEMS: usize = 50_000;
const MAX_OPS: usize = 2_000;

pub(crate) fn namespace() -> NamespaceOptions {
    let mut ns = open_namespace(NAMESPACE);
    ns.presence = true;
    ns.join_leave = true;
    ns
}

pub(crate) fn cursor_namespace() -> NamespaceOptions {
    let mut ns = open_namespace(CURSOR_NAMESPACE);
    ns.history_ttl = Duration::ZERO;
    ns
}

/// The documents of this node. The lock is held while publishing, so that every page gets the
/// operations in the order the server applied them (an insert after the character it refers to).
#[derive(Default)]
pub(crate) struct Editor {
    docs: Mutex<HashMap<String, Doc>>,
}

#[derive(Deserialize)]
struct DocRef {
    doc: String,
}

#[derive(Deserialize)]
struct Ops {
    doc: String,
    ops: Vec<Op>,
}

#[derive(Serialize)]
struct State<'a> {
    elems: &'a [Elem],
}

#[derive(Serialize)]
struct Applied<'a> {
    ops: &'a [Op],
}

impl Editor {
    /// `editor.state {doc}`: every element of the document, tombstones included.
    pub(crate) async fn state(&self, data: Option<&Data>) -> HandlerResult<RpcReply> {
        let r: DocRef = decode(data)?;
        check_id(&r.doc)?;
        let docs = self.docs.lock().await;
        let elems = docs.get(&r.doc).map_or(&[][..], |d| d.elems());
        Ok(RpcReply::data(Data::json(&State { elems })?))
    }

    /// `editor.ops {doc, ops}`: applies and publishes the new ones.
    pub(crate) async fn ops(&self, node: &Node, data: Option<&Data>) -> HandlerResult<RpcReply> {
        let req: Ops = decode(data)?;
        check_id(&req.doc)?;
        if req.ops.len() > MAX_OPS {
            return Err(invalid(format!("at most {MAX_OPS} operations per call")));
        }
        for op in &req.ops {
            let id = match op {
                Op::Ins { id, .. } | Op::Del { id } => id,
            };
            if id.1.is_empty() || id.1.len() > 32 {
                return Err(invalid("site ids are 1 to 32 bytes"));
            }
        }
        let mut docs = self.docs.lock().await;
        if !docs.contains_key(&req.doc) && docs.len() >= MAX_DOCS {
            return Err(invalid("too many documents on this node"));
        }
        let doc = docs.entry(req.doc.clone()).or_default();
        let mut applied = Vec::new();
        for op in req.ops {
            if matches!(op, Op::Ins { .. }) && doc.len() >= MAX_ELEMS {
                return Err(invalid("the document is full"));
            }
            match doc.apply(&op) {
                Ok(true) => applied.push(op),
                Ok(false) => {}
                Err(_) => {
                    return Err(invalid(
                        "an edit refers to text this document does not have",
                    ))
                }
            }
        }
        if !applied.is_empty() {
            node.publish_json(
                &format!("{NAMESPACE}:{}", req.doc),
                &Applied { ops: &applied },
            )
            .await?;
        }
        drop(docs);
        Ok(RpcReply::empty())
    }
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Cursor {
    /// The id of the character before the caret (`null`: at the start).
    after: Option<crate::crdt::Id>,
}

/// A cursor publication: exactly `{after}`.
pub(crate) fn cursor(data: &Data) -> HandlerResult<PublishReply> {
    let cursor: Cursor = data.decode()?;
    Ok(PublishReply::replace(Data::json(&cursor)?))
}

/// A document or cursor channel.
pub(crate) fn check_channel(channel: &str) -> Result<(), Rejection> {
    check_id(channel.split_once(':').map_or("", |(_, d)| d))
}

fn check_id(doc: &str) -> Result<(), Rejection> {
    if valid_id(doc) {
        Ok(())
    } else {
        Err(invalid("document names are 1 to 32 of a-z, 0-9, - and _"))
    }
}

fn decode<T: serde::de::DeserializeOwned>(data: Option<&Data>) -> Result<T, Rejection> {
    data.ok_or_else(|| invalid("data needed"))?.decode()
}
