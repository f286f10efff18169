//! Rooms and presence (a third `impl Router`): join, leave, say.
//!
//! A session may join only the rooms its grant allows (`rooms`, by default the rooms
//! of what it may read); since presence and `said` go only to members, a client sees
//! the members of, and messages in, its allowed rooms only.

use super::router::Router;
use crate::protocol::{frame, BusMsg, ErrorCode, Member, SessionId};
use crate::value::Value;

/// Rooms one session may be in (a panel is in one or a few).
const MAX_ROOMS: usize = 256;

impl Router {
    pub(super) fn member(&self, sid: SessionId) -> Option<Member> {
        self.sessions.get(&sid).map(|s| Member {
            session: sid,
            name: s.name.clone(),
            role: s.role,
        })
    }

    pub(super) fn join(&mut self, sid: SessionId, id: u64, room: String) {
        if let Err(why) = crate::model::check_level("room", &room) {
            return self.error(sid, Some(id), ErrorCode::InvalidTopic, why);
        }
        if !self.may(sid, |g| g.rooms.allows(&room)) {
            return self.forbidden(sid, Some(id), format!("joining room {room:?}"));
        }
        let joined = self.sessions.get(&sid).map_or(0, |s| s.rooms.len());
        if joined >= MAX_ROOMS && !self.rooms.get(&room).is_some_and(|m| m.contains(&sid)) {
            return self.error(
                sid,
                Some(id),
                ErrorCode::Limit,
                format!("a session may be in at most {MAX_ROOMS} rooms"),
            );
        }
        let Some(me) = self.member(sid) else {
            return;
        };
        let members = self.rooms.entry(room.clone()).or_default();
        let fresh = members.insert(sid);
        let list: Vec<SessionId> = members.iter().copied().collect();
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.rooms.insert(room.clone());
        }
        if fresh {
            let f = frame(&BusMsg::Presence {
                room: room.clone(),
                session: sid,
                name: me.name,
                role: me.role,
                joined: true,
            });
            for m in list.iter().filter(|m| **m != sid) {
                self.send(*m, f.clone());
            }
            self.publish_presence(sid);
        }
        let result = list
            .iter()
            .filter_map(|m| self.member(*m))
            .map(|m| crate::value::to_value(&m))
            .collect();
        self.ok(sid, id, Value::Array(result));
    }

    pub(super) fn leave_room(&mut self, sid: SessionId, room: &str) {
        let Some(members) = self.rooms.get_mut(room) else {
            return;
        };
        if !members.remove(&sid) {
            return;
        }
        let rest: Vec<SessionId> = members.iter().copied().collect();
        if rest.is_empty() {
            self.rooms.remove(room);
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.rooms.remove(room);
        }
        if let Some(me) = self.member(sid) {
            let f = frame(&BusMsg::Presence {
                room: room.into(),
                session: sid,
                name: me.name,
                role: me.role,
                joined: false,
            });
            for m in rest {
                self.send(m, f.clone());
            }
        }
    }

    pub(super) fn say(&mut self, sid: SessionId, room: &str, value: Value) {
        let members: Vec<SessionId> = match self.rooms.get(room) {
            Some(m) if m.contains(&sid) => m.iter().copied().filter(|m| *m != sid).collect(),
            _ => {
                return self.error(
                    sid,
                    None,
                    ErrorCode::NotMember,
                    format!("join {room:?} before saying something in it"),
                );
            }
        };
        let name = self
            .sessions
            .get(&sid)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let f = frame(&BusMsg::Said {
            room: room.into(),
            from: sid,
            name,
            value,
        });
        for m in members {
            self.send(m, f.clone());
        }
    }
}
