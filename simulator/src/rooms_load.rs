//! The MUC workload of protocol mode: every simulated node runs the real
//! services host (`ring-services`, the same machine as a node's) over its
//! record replicator, and this module plays the users of the rooms, who
//! live outside the ring (as behind an edge), and checks what churn does
//! to them.
//!
//! `rooms` rooms are created before the measured phase, each by its first
//! member, who configures it; the others join. During the measured phase
//! members talk at the given rate. A member whose room is taken over (the
//! new host tells it with status 332) or whose join failed joins again. For
//! every message the sender should hear back: its own message reflected by
//! the room (**echoed**) or a stanza error (**errors**). A message with
//! neither by the end is **unanswered**. The product's rule is that this
//! stays 0 (everything accepted is delivered or bounced) except where a
//! crash takes the stanza with it, which is counted apart: the node it
//! entered the ring through died before it could answer
//! (**entry_departed**; in a real ring the user's server would see its s2s
//! stream break), or the room's host died after accepting it
//! (**host_departed**; a crash loses what the host had in memory and had
//! not yet sent).

use serde::Serialize;
use xmpp_parsers::minidom::Element;

/// The MUC service the simulated rooms live on.
pub const SERVICE: &str = "conference.ring.test";
/// The domain of the simulated users.
pub const USERS: &str = "users.example";

/// Parameters of the MUC workload.
#[derive(Clone, Debug, PartialEq)]
pub struct RoomParams {
    /// Rooms (0: no workload).
    pub rooms: usize,
    /// Members of each room.
    pub members: usize,
    /// Groupchat messages per simulated second, over all rooms.
    pub messages_per_s: f64,
}

impl Default for RoomParams {
    fn default() -> Self {
        RoomParams {
            rooms: 0,
            members: 5,
            messages_per_s: 10.0,
        }
    }
}

/// The MUC figures of a run (JSON contract, under `rooms`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RoomFigures {
    /// Rooms.
    pub rooms: u64,
    /// Members per room.
    pub members: u64,
    /// Groupchat messages sent in the measured phase.
    pub messages: u64,
    /// Messages reflected to their sender.
    pub echoed: u64,
    /// Messages answered with a stanza error.
    pub errors: u64,
    /// Messages neither reflected nor answered with an error.
    pub unanswered: u64,
    /// Of those, messages whose entry node died before it could answer.
    pub entry_departed: u64,
    /// Of those, messages accepted by a room host that then died.
    pub host_departed: u64,
    /// Copies received by the other members / copies expected (members
    /// in the room, as the sender saw it).
    pub delivery_ratio: f64,
    /// Status-332 notices received (a new host took a room over).
    pub takeover_notices: u64,
    /// Joins sent (creations, first joins, rejoins).
    pub joins: u64,
    /// Joins answered with an error (they are tried again).
    pub join_errors: u64,
    /// Members in their room at the end / all members.
    pub members_in_room_at_end: f64,
    /// Reflection latency, median and 99th percentile, ms.
    pub echo_latency_ms_p50: f64,
    /// See `echo_latency_ms_p50`.
    pub echo_latency_ms_p99: f64,
}

/// What a stanza the workload sends is for (rooms and members are
/// numbered from 0; member 0 creates and owns its room).
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Intent {
    /// A join (or creation) of `member` to `room`.
    Join { room: u32, member: u32 },
    /// The owner's instant configuration.
    Configure { room: u32 },
    /// A groupchat message.
    Say { room: u32, member: u32 },
}

struct Sent {
    member: u32,
    sent_us: u64,
    entry: u32,
    /// The node that took the message in as the room's host.
    host: Option<u32>,
    expected: u64,
    echoed: bool,
    error: bool,
}

/// The users of the rooms.
pub struct Rooms {
    p: RoomParams,
    /// In room, by (room, member), as the member sees it.
    in_room: Vec<bool>,
    msgs: Vec<Sent>,
    received: u64,
    figures: RoomFigures,
    echo_ms: Vec<f64>,
    measuring: bool,
}

/// The room JID of room `room`.
pub fn room_jid(room: u32) -> String {
    format!("r{room}@{SERVICE}")
}

/// The full JID of `member` of `room`.
pub fn member_jid(room: u32, member: u32) -> String {
    format!("u{room}x{member}@{USERS}/sim")
}

fn parse_member(jid: &str) -> Option<(u32, u32)> {
    let local = jid.strip_suffix(&format!("@{USERS}/sim"))?;
    let (r, m) = local.strip_prefix('u')?.split_once('x')?;
    Some((r.parse().ok()?, m.parse().ok()?))
}

impl Rooms {
    /// The users of `p.rooms` rooms.
    pub fn new(p: &RoomParams) -> Rooms {
        Rooms {
            in_room: vec![false; p.rooms * p.members],
            p: p.clone(),
            msgs: Vec::new(),
            received: 0,
            figures: RoomFigures {
                rooms: p.rooms as u64,
                members: p.members as u64,
                ..Default::default()
            },
            echo_ms: Vec::new(),
            measuring: false,
        }
    }

    /// From now on messages count.
    pub fn start_measuring(&mut self) {
        self.measuring = true;
    }

    fn idx(&self, room: u32, member: u32) -> usize {
        room as usize * self.p.members + member as usize
    }

    /// Whether `member` believes it is in `room`.
    pub fn is_in(&self, room: u32, member: u32) -> bool {
        self.in_room[self.idx(room, member)]
    }

    /// The members of `room` in it.
    pub fn present(&self, room: u32) -> Vec<u32> {
        (0..self.p.members as u32)
            .filter(|m| self.is_in(room, *m))
            .collect()
    }

    /// The stanza for `intent`, entering the ring at node `entry`.
    pub fn stanza(&mut self, intent: Intent, entry: u32, now_us: u64) -> Option<Element> {
        let xml = match intent {
            Intent::Join { room, member } => {
                self.figures.joins += 1;
                format!(
                    "<presence xmlns='jabber:client' from='{}' to='{}/n{member}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>",
                    member_jid(room, member),
                    room_jid(room)
                )
            }
            Intent::Configure { room } => format!(
                "<iq xmlns='jabber:client' type='set' id='cfg' from='{}' to='{}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_persistentroom'><value>1</value></field></x></query></iq>",
                member_jid(room, 0),
                room_jid(room)
            ),
            Intent::Say { room, member } => {
                if !self.measuring || !self.is_in(room, member) {
                    return None;
                }
                let id = self.msgs.len();
                let expected = self.present(room).len().saturating_sub(1) as u64;
                self.msgs.push(Sent {
                    member,
                    sent_us: now_us,
                    entry,
                    host: None,
                    expected,
                    echoed: false,
                    error: false,
                });
                self.figures.messages += 1;
                format!(
                    "<message xmlns='jabber:client' type='groupchat' id='m{id}' from='{}' to='{}'><body>m{id}</body></message>",
                    member_jid(room, member),
                    room_jid(room)
                )
            }
        };
        xml.parse().ok()
    }

    /// A stanza reached a user. Returns the joins to send again (after a
    /// takeover notice or a refused join).
    pub fn received(&mut self, st: &Element, now_us: u64) -> Vec<Intent> {
        let Some((room, member)) = st.attr("to").and_then(parse_member) else {
            return Vec::new();
        };
        if room as usize >= self.p.rooms || member as usize >= self.p.members {
            return Vec::new();
        }
        let i = self.idx(room, member);
        let is_error = st.attr("type") == Some("error");
        match st.name() {
            "presence" => {
                let x = st.get_child("x", "http://jabber.org/protocol/muc#user");
                let codes: Vec<&str> = x
                    .map(|x| {
                        x.children()
                            .filter(|c| c.name() == "status")
                            .filter_map(|c| c.attr("code"))
                            .collect()
                    })
                    .unwrap_or_default();
                let own = codes.contains(&"110");
                if is_error {
                    self.figures.join_errors += 1;
                    self.in_room[i] = false;
                    return vec![Intent::Join { room, member }];
                }
                if own && st.attr("type") == Some("unavailable") {
                    self.in_room[i] = false;
                    if codes.contains(&"332") {
                        self.figures.takeover_notices += 1;
                        return vec![Intent::Join { room, member }];
                    }
                } else if own {
                    self.in_room[i] = true;
                }
            }
            "message" => {
                let Some(id) = st
                    .attr("id")
                    .and_then(|id| id.strip_prefix('m'))
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    return Vec::new();
                };
                let Some(m) = self.msgs.get_mut(id) else {
                    return Vec::new();
                };
                if is_error {
                    m.error = true;
                } else if m.member == member {
                    if !m.echoed {
                        m.echoed = true;
                        self.echo_ms
                            .push(now_us.saturating_sub(m.sent_us) as f64 / 1000.0);
                    }
                } else {
                    self.received += 1;
                }
            }
            _ => {}
        }
        Vec::new()
    }

    /// The room's host at node slot `host` accepted `st` (a message of
    /// the workload, or anything else, which is ignored).
    pub fn accepted(&mut self, st: &Element, host: u32) {
        if let Some(m) = st
            .attr("id")
            .and_then(|id| id.strip_prefix('m'))
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|i| self.msgs.get_mut(i))
        {
            m.host = Some(host);
        }
    }

    /// `st` never reached its room (the ring bounced it): its sender gets
    /// the error a node answers with.
    pub fn bounced(&mut self, st: &Element) -> Vec<Intent> {
        let condition = ring_services::stanza::DefinedCondition::RecipientUnavailable;
        match ring_services::stanza::error_reply(st, condition, None) {
            Some(e) => self.received(&e, 0),
            None => Vec::new(),
        }
    }

    /// Messages without an answer yet.
    pub fn pending(&self) -> usize {
        self.msgs.iter().filter(|m| !m.echoed && !m.error).count()
    }

    /// The figures; `live` says whether a node slot is still alive.
    pub fn finish(mut self, live: impl Fn(u32) -> bool) -> RoomFigures {
        let mut expected = 0;
        for m in &self.msgs {
            expected += m.expected;
            if m.echoed {
                self.figures.echoed += 1;
            } else if m.error {
                self.figures.errors += 1;
            } else {
                self.figures.unanswered += 1;
                if !live(m.entry) {
                    self.figures.entry_departed += 1;
                } else if m.host.is_some_and(|h| !live(h)) {
                    self.figures.host_departed += 1;
                }
            }
        }
        self.figures.delivery_ratio = if expected == 0 {
            1.0
        } else {
            self.received as f64 / expected as f64
        };
        let total = self.in_room.len().max(1) as f64;
        self.figures.members_in_room_at_end =
            self.in_room.iter().filter(|x| **x).count() as f64 / total;
        self.echo_ms.sort_by(|a, b| a.total_cmp(b));
        let pick = |q: f64| {
            self.echo_ms
                .get(((self.echo_ms.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0.0)
        };
        self.figures.echo_latency_ms_p50 = pick(0.5);
        self.figures.echo_latency_ms_p99 = pick(0.99);
        self.figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_follow_their_presences_and_rejoin_after_a_takeover() {
        let mut r = Rooms::new(&RoomParams {
            rooms: 2,
            members: 3,
            messages_per_s: 1.0,
        });
        r.start_measuring();
        let own = |t: &str, extra: &str| -> Element {
            format!("<presence xmlns='jabber:client' from='{}/n1' to='{}' {t}><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/>{extra}</x></presence>", room_jid(1), member_jid(1, 1)).parse().unwrap()
        };
        assert!(r.received(&own("", ""), 0).is_empty());
        assert!(r.is_in(1, 1));
        let again = r.received(&own("type='unavailable'", "<status code='332'/>"), 0);
        assert_eq!(again, vec![Intent::Join { room: 1, member: 1 }]);
        assert!(!r.is_in(1, 1));
        assert_eq!(r.finish(|_| true).takeover_notices, 1);
    }

    #[test]
    fn every_message_is_echoed_errored_or_counted_unanswered() {
        let mut r = Rooms::new(&RoomParams {
            rooms: 1,
            members: 2,
            messages_per_s: 1.0,
        });
        r.start_measuring();
        r.in_room[0] = true;
        r.in_room[1] = true;
        let a = r
            .stanza(Intent::Say { room: 0, member: 0 }, 7, 1_000)
            .unwrap();
        let b = r
            .stanza(Intent::Say { room: 0, member: 1 }, 8, 1_000)
            .unwrap();
        r.stanza(Intent::Say { room: 0, member: 0 }, 9, 1_000)
            .unwrap();
        // a is reflected to its sender and reaches the other member.
        let mut echo = a.clone();
        ring_services::stanza::set(&mut echo, "to", &member_jid(0, 0));
        r.received(&echo, 3_000);
        let mut copy = a.clone();
        ring_services::stanza::set(&mut copy, "to", &member_jid(0, 1));
        r.received(&copy, 3_000);
        // b bounces; the third never comes back and its entry died.
        r.bounced(&b);
        let f = r.finish(|slot| slot != 9);
        assert_eq!((f.messages, f.echoed, f.errors, f.unanswered), (3, 1, 1, 1));
        assert_eq!(f.entry_departed, 1);
        assert!((f.delivery_ratio - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(f.echo_latency_ms_p50, 2.0);
    }
}
