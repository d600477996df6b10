//! Multiplayer game: players move on a shared board and collect coins. The server is the
//! authority: clients send only their input (RPC `game.input {room, dx, dy}`), the server moves
//! everyone and publishes the whole state into `demo-game:<room>` 20 times per second. Clients
//! measure their round trip with `game.ping {room, latency}` and the server shows every
//! player's latency to everyone. A player joins by subscribing (`{name}`) and leaves when the
//! subscription ends (the unsubscribed notification).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchboard::config::NamespaceOptions;
use switchboard::{ClientContext, Data, HandlerResult, Node, Rejection, RpcReply, SubscribeReply};

use crate::chat::now_ms;
use crate::{invalid, name_from, open_namespace, valid_id};

/// Game rooms.
pub(crate) const NAMESPACE: &str = "demo-game";
/// State updates per second.
pub(crate) const TICKS_PER_SECOND: u64 = 20;
/// Board size in board units.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 400.0;
/// Player speed, units per second.
const SPEED: f64 = 220.0;
/// Distance at which a coin is collected.
const REACH: f64 = 22.0;
/// Players per room, rooms per node.
const MAX_PLAYERS: usize = 16;
const MAX_ROOMS: usize = 50;

pub(crate) fn namespace() -> NamespaceOptions {
    open_namespace(NAMESPACE)
}

#[derive(Clone, Serialize)]
struct Player {
    id: String,
    name: String,
    x: f64,
    y: f64,
    #[serde(skip)]
    dx: f64,
    #[serde(skip)]
    dy: f64,
    score: u32,
    /// Round trip the player's page measured, in milliseconds.
    latency: u32,
}

#[derive(Clone, Copy, Serialize)]
struct Point {
    x: f64,
    y: f64,
}

struct Room {
    players: Vec<Player>,
    coin: Point,
    seed: u64,
}

/// What every player gets, 20 times per second.
#[derive(Serialize)]
struct State<'a> {
    /// Server time, milliseconds since the Unix epoch.
    t: u64,
    tick: u64,
    players: &'a [Player],
    coin: Point,
}

/// The rooms of this node.
#[derive(Default)]
pub(crate) struct Game {
    rooms: Mutex<HashMap<String, Room>>,
}

#[derive(Deserialize)]
struct Input {
    room: String,
    dx: f64,
    dy: f64,
}

#[derive(Deserialize)]
struct Ping {
    room: String,
    #[serde(default)]
    latency: u32,
}

#[derive(Serialize)]
struct Welcome<'a> {
    you: &'a str,
    width: f64,
    height: f64,
    rate: u64,
}

impl Game {
    /// A player joins `demo-game:<room>` with `{name}`.
    pub(crate) fn subscribe(
        &self,
        ctx: &ClientContext,
        channel: &str,
        data: Option<&Data>,
    ) -> HandlerResult<SubscribeReply> {
        let id = room_id(channel)?;
        let name = name_from(data, "name")?;
        let mut rooms = self.rooms.lock();
        if !rooms.contains_key(id) && rooms.len() >= MAX_ROOMS {
            return Err(invalid("too many game rooms on this node"));
        }
        let room = rooms.entry(id.to_string()).or_insert_with(|| {
            let mut room = Room {
                players: Vec::new(),
                coin: Point { x: 0.0, y: 0.0 },
                seed: now_ms() | 1,
            };
            room.coin = room.random_point();
            room
        });
        if room.players.len() >= MAX_PLAYERS {
            return Err(invalid("this room is full"));
        }
        room.players.retain(|p| p.id != ctx.client_id());
        let start = room.random_point();
        room.players.push(Player {
            id: ctx.client_id().to_string(),
            name,
            x: start.x,
            y: start.y,
            dx: 0.0,
            dy: 0.0,
            score: 0,
            latency: 0,
        });
        let welcome = Welcome {
            you: ctx.client_id(),
            width: WIDTH,
            height: HEIGHT,
            rate: TICKS_PER_SECOND,
        };
        Ok(SubscribeReply::accept().with_data(Data::json(&welcome)?))
    }

    /// The subscription to `channel` of `client` ended: the player leaves.
    pub(crate) fn leave(&self, client: &str, channel: &str) {
        let Ok(id) = room_id(channel) else { return };
        let mut rooms = self.rooms.lock();
        if let Some(room) = rooms.get_mut(id) {
            room.players.retain(|p| p.id != client);
            if room.players.is_empty() {
                rooms.remove(id);
            }
        }
    }

    /// `game.input {room, dx, dy}`: the direction the player holds (-1, 0 or 1 on each axis).
    pub(crate) fn input(
        &self,
        ctx: &ClientContext,
        data: Option<&Data>,
    ) -> HandlerResult<RpcReply> {
        let input: Input = decode(data)?;
        let (dx, dy) = (input.dx.clamp(-1.0, 1.0), input.dy.clamp(-1.0, 1.0));
        self.with_player(ctx, &input.room, |p| {
            // Diagonals are not faster.
            let norm = (dx * dx + dy * dy).sqrt().max(1.0);
            p.dx = dx / norm;
            p.dy = dy / norm;
        })?;
        Ok(RpcReply::empty())
    }

    /// `game.ping {room, latency}`: answers at once; `latency` is the page's last measurement.
    pub(crate) fn ping(&self, ctx: &ClientContext, data: Option<&Data>) -> HandlerResult<RpcReply> {
        let ping: Ping = decode(data)?;
        self.with_player(ctx, &ping.room, |p| p.latency = ping.latency.min(60_000))?;
        Ok(RpcReply::empty())
    }

    fn with_player(
        &self,
        ctx: &ClientContext,
        room: &str,
        f: impl FnOnce(&mut Player),
    ) -> Result<(), Rejection> {
        let mut rooms = self.rooms.lock();
        let player = rooms
            .get_mut(room)
            .and_then(|r| r.players.iter_mut().find(|p| p.id == ctx.client_id()))
            .ok_or_else(|| invalid("join the room first"))?;
        f(player);
        Ok(())
    }

    /// Moves everyone and publishes every room's state, [`TICKS_PER_SECOND`] times per second.
    pub(crate) fn spawn(self: &Arc<Self>, node: Node) {
        let game = self.clone();
        tokio::spawn(async move {
            let mut interval =
                tokio::time::interval(Duration::from_millis(1000 / TICKS_PER_SECOND));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let dt = 1.0 / TICKS_PER_SECOND as f64;
            for tick in 0.. {
                interval.tick().await;
                let states: Vec<(String, String)> = {
                    let mut rooms = game.rooms.lock();
                    rooms
                        .iter_mut()
                        .filter_map(|(id, room)| {
                            room.step(dt);
                            let state = State {
                                t: now_ms(),
                                tick,
                                players: &room.players,
                                coin: room.coin,
                            };
                            serde_json::to_string(&state).ok().map(|s| (id.clone(), s))
                        })
                        .collect()
                };
                for (id, state) in states {
                    let Ok(data) = Data::parse(state) else {
                        continue;
                    };
                    if let Err(e) = node.publish(&format!("{NAMESPACE}:{id}"), data).await {
                        tracing::debug!("game state not published: {e}");
                    }
                }
            }
        });
    }
}

impl Room {
    /// One tick: move players inside the board, collect the coin.
    fn step(&mut self, dt: f64) {
        let mut collected = false;
        for p in &mut self.players {
            p.x = (p.x + p.dx * SPEED * dt).clamp(0.0, WIDTH);
            p.y = (p.y + p.dy * SPEED * dt).clamp(0.0, HEIGHT);
            if !collected && (p.x - self.coin.x).hypot(p.y - self.coin.y) < REACH {
                p.score += 1;
                collected = true;
            }
        }
        if collected {
            self.coin = self.random_point();
        }
    }

    fn random_point(&mut self) -> Point {
        let mut next = || {
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            (self.seed >> 11) as f64 / (1u64 << 53) as f64
        };
        Point {
            x: 30.0 + next() * (WIDTH - 60.0),
            y: 30.0 + next() * (HEIGHT - 60.0),
        }
    }
}

fn room_id(channel: &str) -> Result<&str, Rejection> {
    let id = channel.split_once(':').map_or("", |(_, r)| r);
    if valid_id(id) {
        Ok(id)
    } else {
        Err(invalid("room names are 1 to 32 of a-z, 0-9, - and _"))
    }
}

fn decode<T: serde::de::DeserializeOwned>(data: Option<&Data>) -> Result<T, Rejection> {
    data.ok_or_else(|| invalid("data needed"))?.decode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn player(x: f64, y: f64, dx: f64) -> Player {
        Player {
            id: "c".into(),
            name: "p".into(),
            x,
            y,
            dx,
            dy: 0.0,
            score: 0,
            latency: 0,
        }
    }

    #[test]
    fn players_move_stay_on_the_board_and_collect_coins() {
        let mut room = Room {
            players: vec![player(100.0, 100.0, 1.0), player(WIDTH - 1.0, 10.0, 1.0)],
            coin: Point { x: 120.0, y: 100.0 },
            seed: 7,
        };
        room.step(0.05);
        assert!((room.players[0].x - 111.0).abs() < 1e-9);
        assert_eq!(room.players[1].x, WIDTH);
        assert_eq!(room.players[0].score, 1);
        assert!(room.coin.x >= 30.0 && room.coin.x <= WIDTH - 30.0);
    }
}
