//! Live auction: lots `demo-auction:<lot>`. Bids arrive by RPC (`auction.bid`) and are checked
//! here, under one lock per node: too low, too late (the lot ended moments ago), closed; an
//! accepted bid is published to the lot's channel, so every bidder sees the new price. A timer
//! closes the lot at its end and publishes the winner. `auction.start` opens a new round when the
//! lot is closed. Subscribing returns the lot's state (subscribe reply data), also after a
//! reconnect.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchboard::config::NamespaceOptions;
use switchboard::{Data, HandlerResult, Node, Rejection, RpcReply, SubscribeReply};

use crate::chat::now_ms;
use crate::{invalid, open_namespace, valid_id};

/// Auction lots.
pub(crate) const NAMESPACE: &str = "demo-auction";
/// Bids must beat the price by at least this much.
const INCREMENT: u64 = 5;
/// Price of a new lot.
const START_PRICE: u64 = 100;
/// A bid this long after the end is "too late"; later ones are told the lot is closed.
const TOO_LATE_MS: u64 = 5000;
/// At most this many lots are kept (one node's memory stays bounded).
const MAX_LOTS: usize = 100;
/// What is for sale, round after round.
const ITEMS: &[&str] = &[
    "Vintage rotary telephone",
    "Hand-wound telegraph key",
    "Brass switchboard plug",
    "Operator's headset, 1952",
];

pub(crate) fn namespace() -> NamespaceOptions {
    let mut ns = open_namespace(NAMESPACE);
    ns.presence = true;
    ns
}

/// One lot, as the pages see it.
#[derive(Clone, Serialize)]
pub(crate) struct Lot {
    item: &'static str,
    round: u64,
    price: u64,
    /// The highest bidder's nickname, empty without bids.
    leader: String,
    /// When bidding ends, in milliseconds since the Unix epoch.
    ends_at: u64,
    closed: bool,
    /// The server's clock when this state was sent (pages correct their countdown with it).
    now: u64,
}

/// The lots of this node.
#[derive(Default)]
pub(crate) struct Auctions {
    lots: Mutex<HashMap<String, Lot>>,
}

#[derive(Deserialize)]
struct Bid {
    lot: String,
    nick: String,
    amount: u64,
}

#[derive(Deserialize)]
struct Round {
    #[serde(default = "default_seconds")]
    seconds: u64,
}

fn default_seconds() -> u64 {
    60
}

#[derive(Deserialize)]
struct Start {
    lot: String,
    /// Length of the round in seconds (3 to 600).
    seconds: u64,
}

impl Auctions {
    /// The state of `lot`, for a subscriber; a new lot opens with a round of `{seconds}` from
    /// the subscribe data (default 60).
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        node: &Node,
        channel: &str,
        data: Option<&Data>,
    ) -> HandlerResult<SubscribeReply> {
        let id = lot_id(channel)?;
        let seconds = match data {
            Some(d) => d.decode::<Option<Round>>()?.map_or(60, |r| r.seconds),
            None => 60,
        };
        if !(3..=600).contains(&seconds) {
            return Err(invalid("a round lasts 3 to 600 seconds"));
        }
        let lot = {
            let mut lots = self.lots.lock();
            if !lots.contains_key(id) && lots.len() >= MAX_LOTS {
                return Err(invalid("too many lots on this node"));
            }
            lots.entry(id.to_string())
                .or_insert_with(|| new_lot(0, seconds))
                .clone()
        };
        if !lot.closed {
            self.close_at_end(node, id, &lot);
        }
        Ok(SubscribeReply::accept().with_data(Data::json(&stamped(lot))?))
    }

    /// `auction.bid {lot, nick, amount}`.
    pub(crate) async fn bid(&self, node: &Node, data: Option<&Data>) -> HandlerResult<RpcReply> {
        let bid: Bid = decode(data)?;
        let nick = bid.nick.trim();
        if nick.is_empty() || nick.chars().count() > 24 {
            return Err(invalid("nickname: 1 to 24 characters"));
        }
        let lot = {
            let mut lots = self.lots.lock();
            let lot = lots
                .get_mut(&bid.lot)
                .ok_or_else(|| invalid("no such lot"))?;
            check(lot, bid.amount, now_ms())?;
            lot.price = bid.amount;
            lot.leader = nick.to_string();
            lot.clone()
        };
        let event = Event::Bid(stamped(lot));
        publish(node, &bid.lot, &event).await?;
        Ok(RpcReply::data(Data::json(&event)?))
    }

    /// `auction.start {lot, seconds}`: a new round of a closed lot.
    pub(crate) async fn start(
        self: &Arc<Self>,
        node: &Node,
        data: Option<&Data>,
    ) -> HandlerResult<RpcReply> {
        let start: Start = decode(data)?;
        if !(3..=600).contains(&start.seconds) {
            return Err(invalid("a round lasts 3 to 600 seconds"));
        }
        let lot = {
            let mut lots = self.lots.lock();
            let lot = lots
                .get_mut(&start.lot)
                .ok_or_else(|| invalid("no such lot"))?;
            if !lot.closed {
                return Err(invalid("this auction is still running"));
            }
            *lot = new_lot(lot.round + 1, start.seconds);
            lot.clone()
        };
        self.close_at_end(node, &start.lot, &lot);
        let event = Event::Started(stamped(lot));
        publish(node, &start.lot, &event).await?;
        Ok(RpcReply::data(Data::json(&event)?))
    }

    /// Closes round `lot.round` of `id` at its end and publishes the result (once: a later
    /// timer of the same round finds it closed).
    fn close_at_end(self: &Arc<Self>, node: &Node, id: &str, lot: &Lot) {
        let auctions = self.clone();
        let (node, id, round) = (node.clone(), id.to_string(), lot.round);
        let wait = lot.ends_at.saturating_sub(now_ms());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let closed = {
                let mut lots = auctions.lots.lock();
                match lots.get_mut(&id) {
                    Some(lot) if lot.round == round && !lot.closed => {
                        lot.closed = true;
                        Some(lot.clone())
                    }
                    _ => None,
                }
            };
            if let Some(lot) = closed {
                let _ = publish(&node, &id, &Event::Closed(stamped(lot))).await;
            }
        });
    }
}

/// What the lot's channel carries.
#[derive(Serialize)]
#[serde(tag = "type", content = "lot", rename_all = "lowercase")]
enum Event {
    Bid(Lot),
    Started(Lot),
    Closed(Lot),
}

/// Whether a bid of `amount` at `now` may replace `lot`'s price.
fn check(lot: &Lot, amount: u64, now: u64) -> Result<(), Rejection> {
    if now >= lot.ends_at {
        let ago = now - lot.ends_at;
        if ago < TOO_LATE_MS {
            return Err(Rejection::error(
                4002,
                format!("too late: bidding ended {:.1} s ago", ago as f64 / 1000.0),
            ));
        }
        return Err(Rejection::error(4003, "the auction is closed"));
    }
    let minimum = lot.price + INCREMENT;
    if amount < minimum {
        return Err(Rejection::error(
            4001,
            format!("too low: the minimum bid is {minimum}"),
        ));
    }
    if amount > 1_000_000 {
        return Err(invalid("that is more than anyone has"));
    }
    Ok(())
}

fn new_lot(round: u64, seconds: u64) -> Lot {
    Lot {
        item: ITEMS[round as usize % ITEMS.len()],
        round,
        price: START_PRICE,
        leader: String::new(),
        ends_at: now_ms() + seconds * 1000,
        closed: false,
        now: 0,
    }
}

fn stamped(mut lot: Lot) -> Lot {
    lot.now = now_ms();
    lot
}

fn lot_id(channel: &str) -> Result<&str, Rejection> {
    let id = channel.split_once(':').map_or("", |(_, l)| l);
    if valid_id(id) {
        Ok(id)
    } else {
        Err(invalid("lot names are 1 to 32 of a-z, 0-9, - and _"))
    }
}

fn decode<T: serde::de::DeserializeOwned>(data: Option<&Data>) -> Result<T, Rejection> {
    data.ok_or_else(|| invalid("data needed"))?.decode()
}

async fn publish(node: &Node, lot: &str, event: &Event) -> Result<(), Rejection> {
    node.publish_json(&format!("{NAMESPACE}:{lot}"), event)
        .await
        .map(|_| ())
        .map_err(Rejection::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lot(price: u64, ends_at: u64, closed: bool) -> Lot {
        Lot {
            item: ITEMS[0],
            round: 0,
            price,
            leader: String::new(),
            ends_at,
            closed,
            now: 0,
        }
    }

    fn code(r: Result<(), Rejection>) -> u32 {
        match r {
            Err(Rejection::Error { code, .. }) => code,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bids_are_checked() {
        let open = lot(100, 10_000, false);
        assert!(check(&open, 105, 5_000).is_ok());
        assert_eq!(code(check(&open, 104, 5_000)), 4001);
        assert_eq!(code(check(&open, 200, 10_000)), 4002);
        assert_eq!(code(check(&lot(100, 10_000, true), 200, 12_000)), 4002);
        assert_eq!(code(check(&lot(100, 10_000, true), 200, 20_000)), 4003);
    }
}
